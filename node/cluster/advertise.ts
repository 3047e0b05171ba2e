// The address other members reach us at: OK Log's CalculateAdvertiseIP (reference §5.3) with its
// bugs fixed (§11.2 item 9): never a nil IP (a clear error instead), the port defaults to the
// bind port, and `::` is a wildcard like 0.0.0.0. For a wildcard bind, go-sockaddr's
// GetPrivateIP order: every usable address of an up, non-loopback interface, sorted default-route
// interface first, then IPv4 before IPv6, then the smallest network; the first *private* one wins
// (so a private IPv6 ULA beats a public IPv4, as in Go OK Log). A public address is used only
// when there is no private one, with a warning. Either family works because a wildcard bind
// listens dual-stack (transport.ts).
import { readFileSync } from 'node:fs';
import { BlockList, isIP, isIPv4 } from 'node:net';
import { type NetworkInterfaceInfo, networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import { parseAddr } from '../../shared/addr.ts';
import { AdvertiseAddressError } from './errors.ts';
import { bytesToIp, ipToBytes, isWildcard } from './ip.ts';
import { dnsLookupAll, type Lookup } from './memberlist.ts';

export type InterfaceMap = NodeJS.Dict<NetworkInterfaceInfo[]>;

export interface AdvertiseInput {
  /** Host of `-cluster` ('' or a wildcard for every interface). */
  bindHost: string;
  /** The port actually bound. */
  bindPort: number;
  /** `-cluster.advertise-addr` as given ('' when unset). */
  advertiseAddr?: string;
  lookup?: Lookup;
  interfaces?: () => InterfaceMap;
  /** Name of the interface holding the IPv4 default route, if any. */
  defaultRouteInterface?: () => string | null;
  /** Only IPv4 candidates (the sockets could bind IPv4 only: no IPv6 in the kernel). */
  ipv4Only?: boolean;
  logger?: Logger;
}

export interface Advertise {
  ip: string;
  port: number;
  /** How the IP was chosen. */
  source: 'advertise-addr' | 'bind-addr' | 'private-ip' | 'public-ip';
}

const PRIVATE = new BlockList();
PRIVATE.addSubnet('10.0.0.0', 8, 'ipv4');
PRIVATE.addSubnet('100.64.0.0', 10, 'ipv4');
PRIVATE.addSubnet('172.16.0.0', 12, 'ipv4');
PRIVATE.addSubnet('192.0.0.0', 24, 'ipv4');
PRIVATE.addSubnet('192.168.0.0', 16, 'ipv4');
PRIVATE.addSubnet('198.18.0.0', 15, 'ipv4');
PRIVATE.addSubnet('fc00::', 7, 'ipv6');

const UNROUTABLE = new BlockList();
UNROUTABLE.addSubnet('0.0.0.0', 8, 'ipv4');
UNROUTABLE.addSubnet('127.0.0.0', 8, 'ipv4');
UNROUTABLE.addSubnet('169.254.0.0', 16, 'ipv4');
UNROUTABLE.addSubnet('224.0.0.0', 4, 'ipv4');
UNROUTABLE.addSubnet('240.0.0.0', 4, 'ipv4');
UNROUTABLE.addAddress('::', 'ipv6');
UNROUTABLE.addAddress('::1', 'ipv6');
UNROUTABLE.addSubnet('fe80::', 10, 'ipv6');
UNROUTABLE.addSubnet('ff00::', 8, 'ipv6');

function family(ip: string): 'ipv4' | 'ipv6' {
  return isIPv4(ip) ? 'ipv4' : 'ipv6';
}

export function isPrivateIp(ip: string): boolean {
  return isIP(ip) !== 0 && PRIVATE.check(ip, family(ip));
}

/** Loopback, link-local, multicast, unspecified: never a usable advertise address. */
export function isUnroutableIp(ip: string): boolean {
  return isIP(ip) !== 0 && UNROUTABLE.check(ip, family(ip));
}

/** Reads the IPv4 default route's interface from /proc/net/route (Linux); null elsewhere. */
export function linuxDefaultRouteInterface(): string | null {
  try {
    const lines = readFileSync('/proc/net/route', 'utf8').split('\n').slice(1);
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 8 && f[1] === '00000000' && f[7] === '00000000') return f[0];
    }
  } catch {
    // not Linux, or no procfs
  }
  return null;
}

interface Candidate {
  ip: string;
  iface: string;
  prefix: number;
  v4: boolean;
}

/** Usable addresses of up interfaces, best first (default route, IPv4, smallest network). */
export function candidateAddresses(ifaces: InterfaceMap, defaultIface: string | null): Candidate[] {
  const out: Candidate[] = [];
  for (const [iface, addrs] of Object.entries(ifaces)) {
    for (const a of addrs ?? []) {
      if (a.internal) continue;
      const ip = a.address.split('%')[0];
      if (isIP(ip) === 0 || isUnroutableIp(ip)) continue;
      const prefix = Number((a.cidr ?? '').split('/')[1] ?? (a.family === 'IPv4' ? 32 : 128));
      out.push({ ip, iface, prefix, v4: isIPv4(ip) });
    }
  }
  return out.sort((a, b) => {
    const da = a.iface === defaultIface ? 0 : 1;
    const db = b.iface === defaultIface ? 0 : 1;
    if (da !== db) return da - db;
    if (a.v4 !== b.v4) return a.v4 ? -1 : 1;
    return b.prefix - a.prefix; // larger prefix = smaller network first
  });
}

function canonical(ip: string): string {
  return bytesToIp(ipToBytes(ip)) ?? ip;
}

async function resolveOne(lookup: Lookup, host: string): Promise<{ ip: string | null; why: string }> {
  try {
    const ips = [...new Set(await lookup(host))];
    if (ips.length === 1) return { ip: canonical(ips[0]), why: '' };
    return { ip: null, why: `'${host}' resolved to ${ips.length} IPs` };
  } catch (err) {
    return { ip: null, why: `resolving '${host}': ${(err as Error).message}` };
  }
}

export async function calculateAdvertise(i: AdvertiseInput): Promise<Advertise> {
  const lookup = i.lookup ?? dnsLookupAll;
  let port = i.bindPort;
  if (i.advertiseAddr) {
    const a = parseAddr(i.advertiseAddr, i.bindPort);
    port = a.port;
    if (isIP(a.host) !== 0) {
      if (isWildcard(a.host))
        throw new AdvertiseAddressError(
          `-cluster.advertise-addr ${a.host} is not an address others can reach`,
        );
      return { ip: canonical(a.host), port, source: 'advertise-addr' };
    }
    const r = await resolveOne(lookup, a.host);
    if (r.ip) return { ip: r.ip, port, source: 'advertise-addr' };
    i.logger?.warn(`advertise host ${r.why}; using the bind address instead`);
  }
  const host = i.bindHost;
  if (isWildcard(host)) {
    const ifaces = (i.interfaces ?? networkInterfaces)();
    const cands = candidateAddresses(
      ifaces,
      (i.defaultRouteInterface ?? linuxDefaultRouteInterface)(),
    ).filter((c) => c.v4 || !i.ipv4Only);
    const priv = cands.find((c) => isPrivateIp(c.ip));
    if (priv) return { ip: canonical(priv.ip), port, source: 'private-ip' };
    const pub = cands[0];
    if (pub) {
      i.logger?.warn(
        { ip: pub.ip },
        'no private IP address found; advertising a public one (consider -cluster.key to encrypt gossip)',
      );
      return { ip: canonical(pub.ip), port, source: 'public-ip' };
    }
    throw new AdvertiseAddressError(
      `failed to deduce an advertise address from bind address ${host || '0.0.0.0'}: no private or public IP on any up interface; set -cluster.advertise-addr`,
    );
  }
  if (isIP(host) !== 0) return { ip: canonical(host), port, source: 'bind-addr' };
  const r = await resolveOne(lookup, host);
  if (!r.ip) throw new AdvertiseAddressError(`bind host ${r.why}`);
  return { ip: r.ip, port, source: 'bind-addr' };
}
