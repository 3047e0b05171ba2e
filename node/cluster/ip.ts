// IP addresses as memberlist puts them on the wire (4 raw bytes for IPv4, 16 for IPv6) and back.
import { isIPv4, isIPv6 } from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

export function hostPortString(a: HostPort): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** 4 bytes for IPv4 (including IPv4-mapped IPv6), 16 for IPv6; null when not an IP literal. */
export function ipToBytes(ip: string): Buffer | null {
  if (isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  if (!isIPv6(ip)) return null;
  let s = ip;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  const lastColon = s.lastIndexOf(':');
  const last = s.slice(lastColon + 1);
  if (last.includes('.')) {
    const v4 = last.split('.').map(Number);
    s = `${s.slice(0, lastColon + 1)}${((v4[0] << 8) | v4[1]).toString(16)}:${((v4[2] << 8) | v4[3]).toString(16)}`;
  }
  const [head, rest] = s.includes('::') ? s.split('::') : [s, null];
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((h) => Number.parseInt(h, 16)));
  const h = parse(head);
  const r = rest === null ? [] : parse(rest);
  const fill = rest === null ? 0 : 8 - h.length - r.length;
  const words = [...h, ...new Array<number>(Math.max(0, fill)).fill(0), ...r];
  if (words.length !== 8) return null;
  const out = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(words[i] & 0xffff, i * 2);
  const mapped = out.subarray(0, 10).every((b) => b === 0) && out[10] === 0xff && out[11] === 0xff;
  return mapped ? Buffer.from(out.subarray(12)) : out;
}

/** The textual form of a wire address; null when it is neither 4 nor 16 bytes. */
export function bytesToIp(b: Buffer | null): string | null {
  if (!b) return null;
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) return null;
  const mapped = b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
  if (mapped) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i));
  // Compress the longest run of zero words (RFC 5952).
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestStart < 0) return hex.join(':');
  const left = hex.slice(0, bestStart).join(':');
  const right = hex.slice(bestStart + bestLen).join(':');
  return `${left}::${right}`;
}

/**
 * A peer's address as a dual-stack socket reports it, with IPv4-mapped IPv6 (`::ffff:a.b.c.d`)
 * turned back into plain IPv4: memberlist compares addresses and puts them on the wire as 4 bytes
 * for IPv4, and a reply sent to the mapped form would only reach it through the dual-stack socket.
 * Anything else (IPv6 with a zone, names) is returned unchanged.
 */
export function unmapIp(ip: string): string {
  if (!ip.includes(':') || ip.includes('%')) return ip;
  const b = ipToBytes(ip);
  return b?.length === 4 ? (bytesToIp(b) ?? ip) : ip;
}

/** A wire address with an IPv4-mapped 16-byte form reduced to its 4 IPv4 bytes. */
export function unmapAddrBytes(b: Buffer): Buffer {
  if (b.length !== 16) return b;
  const mapped = b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
  return mapped ? Buffer.from(b.subarray(12)) : b;
}

/** True for a wildcard bind host: empty, 0.0.0.0 or :: (OK Log missed `::`, §11.2 item 9). */
export function isWildcard(host: string): boolean {
  return host === '' || host === '0.0.0.0' || host === '::' || host === '[::]';
}
