// Address parsing: every form OK Log's parseAddr accepts (reference §1.3), plus the bare forms
// it wrongly rejects: `127.0.0.1:7650`, `[::1]:7650`, `:7650`, `tcp://[::1]`.
import { isIPv6 } from 'node:net';
import { InvalidAddressError } from './errors.ts';

export interface ParsedAddr {
  /** `tcp` unless a scheme was given (`udp`, `tcp+dns`, `tcp+dnssrv`, …). */
  network: string;
  /** Host without brackets; '' means "all interfaces" for listeners. */
  host: string;
  port: number;
  /** `host:port`, IPv6 hosts bracketed. */
  address: string;
}

const SCHEME = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/;
const HOSTNAME = /^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$/;

export function joinHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function parsePort(raw: string, original: string): number {
  if (!/^\d{1,5}$/.test(raw)) throw new InvalidAddressError(original, `invalid port ${JSON.stringify(raw)}`);
  const port = Number(raw);
  if (port > 65535) throw new InvalidAddressError(original, `port ${port} out of range`);
  return port;
}

function parseHostPort(rest: string, defaultPort: number, original: string): { host: string; port: number } {
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end < 0) throw new InvalidAddressError(original, 'missing ]');
    const host = rest.slice(1, end);
    if (!isIPv6(host))
      throw new InvalidAddressError(original, `invalid IPv6 address ${JSON.stringify(host)}`);
    const tail = rest.slice(end + 1);
    if (tail === '') return { host, port: defaultPort };
    if (!tail.startsWith(':')) throw new InvalidAddressError(original);
    return { host, port: parsePort(tail.slice(1), original) };
  }
  if (isIPv6(rest)) return { host: rest, port: defaultPort }; // bare IPv6 literal, e.g. ::1
  const colon = rest.lastIndexOf(':');
  const host = colon < 0 ? rest : rest.slice(0, colon);
  const port = colon < 0 ? defaultPort : parsePort(rest.slice(colon + 1), original);
  if (host !== '' && !HOSTNAME.test(host)) throw new InvalidAddressError(original);
  return { host, port };
}

/** Parses a listen or dial address; `defaultPort` fills in a missing port. */
export function parseAddr(addr: string, defaultPort: number): ParsedAddr {
  const input = addr.trim().toLowerCase();
  if (input === '') throw new InvalidAddressError(addr, 'empty address');
  let network = 'tcp';
  let rest = input;
  const m = SCHEME.exec(input);
  if (m) {
    network = m[1];
    rest = m[2];
    if (rest === '' && !input.endsWith('//')) throw new InvalidAddressError(addr);
  }
  if (rest.includes('/') || rest.includes('?') || rest.includes('#') || rest.includes('@')) {
    throw new InvalidAddressError(addr);
  }
  const { host, port } = parseHostPort(rest, defaultPort, addr);
  if (host === '' && rest === '') throw new InvalidAddressError(addr, 'missing host');
  return { network, host, port, address: joinHostPort(host, port) };
}

/** For dialling: an empty host (`:7650`) or wildcard means this machine. */
export function dialHost(host: string): string {
  return host === '' || host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
}

/**
 * A connected peer's address for logs, `host:port`: an IPv4 client of a dual-stack listener shows
 * as its IPv4 address (not `::ffff:10.0.0.5`), an IPv6 one bracketed.
 */
export function peerAddress(socket: { remoteAddress?: string; remotePort?: number }): string {
  const raw = socket.remoteAddress ?? '?';
  const host = /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(raw) ? raw.slice(7) : raw;
  return host.includes(':') ? `[${host}]:${socket.remotePort ?? '?'}` : `${host}:${socket.remotePort ?? '?'}`;
}
