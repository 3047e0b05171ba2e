// Where a TCP listener binds. Go's net.Listen("tcp", "0.0.0.0:p") listens dual-stack, so an OK Log
// node on the default wildcard answers on IPv6 too. That matters: the cluster may advertise an IPv6
// address (go-sockaddr's order prefers a private IPv6 ULA to a public IPv4), and peers then reach
// the API and ingest ports at that address. Node's 0.0.0.0 is IPv4 only, so a wildcard `tcp`
// listener binds `::` dual-stack, or 0.0.0.0 where the kernel has no IPv6; `tcp4` and `tcp6` keep
// to their family, as in Go.
import { createServer } from 'node:net';
import type { ParsedAddr } from './addr.ts';

export interface ListenHost {
  host: string;
  ipv6Only: boolean;
}

let ipv6: Promise<boolean> | null = null;

/** Whether this kernel can bind an IPv6 socket (probed once). */
export function ipv6Available(): Promise<boolean> {
  ipv6 ??= new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen({ host: '::', port: 0, ipv6Only: false }, () => probe.close(() => resolve(true)));
  });
  return ipv6;
}

export function isWildcardHost(host: string): boolean {
  return host === '' || host === '0.0.0.0' || host === '::';
}

/** The host and family option to pass to `server.listen` for a parsed listen address. */
export async function listenHost(addr: ParsedAddr): Promise<ListenHost> {
  const wildcard = isWildcardHost(addr.host);
  if (addr.network === 'tcp6') return { host: wildcard ? '::' : addr.host, ipv6Only: true };
  if (!wildcard) return { host: addr.host, ipv6Only: false };
  if (addr.network === 'tcp4' || !(await ipv6Available())) return { host: '0.0.0.0', ipv6Only: false };
  return { host: '::', ipv6Only: false };
}
