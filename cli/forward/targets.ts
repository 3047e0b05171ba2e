// Ingester addresses for `oklog forward` (reference §7 "Targets"): OK Log's forms (`host`,
// `host:port`, `tcp://host:port`, `tcp+dns://name:port`, `tcp+dnssrv://_svc._tcp.name`,
// `tcp+dnsaddr://ip:port`) plus bare `host:port`. Unlike OK Log, names are resolved again on every
// reconnect (never written back into the target), and SRV lookups use the record's port.
import { promises as dns } from 'node:dns';
import { parseAddr } from '../../shared/addr.ts';
import { InvalidAddressError, OklogError } from '../../shared/errors.ts';

export type Resolution = 'none' | 'dns' | 'dnssrv' | 'dnsaddr';

export interface Target {
  /** As the user typed it, for logs. */
  raw: string;
  /** `tcp` (fast/durable TCP), or `http` / `https` for acked writes. */
  proto: string;
  resolution: Resolution;
  host: string;
  port: number;
  /** 4 or 6 for `tcp4` / `tcp6`, else 0 (either). */
  family: 0 | 4 | 6;
}

/** A concrete place to connect to, after resolution. */
export interface Endpoint {
  host: string;
  port: number;
  family: 0 | 4 | 6;
}

export interface SrvRecord {
  name: string;
  port: number;
  priority: number;
  weight: number;
}

/** DNS as the forwarder uses it; injectable so tests can count and fake lookups. */
export interface Resolver {
  lookup(host: string, family: 0 | 4 | 6): Promise<string[]>;
  resolveSrv(name: string): Promise<SrvRecord[]>;
  reverse(ip: string): Promise<string[]>;
}

export const systemResolver: Resolver = {
  async lookup(host, family) {
    const all = await dns.lookup(host, { all: true, family });
    return all.map((a) => a.address);
  },
  resolveSrv: (name) => dns.resolveSrv(name),
  reverse: (ip) => dns.reverse(ip),
};

/** A name that resolved to nothing usable. */
export class ResolveError extends OklogError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, 'OKLOG_ERR_RESOLVE', context, options);
    this.name = 'ResolveError';
  }
}

const SUFFIXES: Record<string, Resolution> = {
  dns: 'dns',
  dnsip: 'dns',
  dnssrv: 'dnssrv',
  dnsaddr: 'dnsaddr',
};

/**
 * Parses one positional argument. `kind` says what we will speak: raw TCP lines (schemes `tcp`,
 * `tcp4`, `tcp6`) or acked HTTP writes (`tcp`/`http` mean plain HTTP, `https` TLS).
 */
export function parseTarget(raw: string, defaultPort: number, kind: 'tcp' | 'http'): Target {
  const a = parseAddr(raw, defaultPort);
  const [base, suffix, ...more] = a.network.split('+');
  if (more.length > 0) throw new InvalidAddressError(raw, `unsupported scheme ${JSON.stringify(a.network)}`);
  let resolution: Resolution = 'none';
  if (suffix !== undefined) {
    const r = SUFFIXES[suffix];
    if (!r)
      throw new InvalidAddressError(
        raw,
        `unknown resolver ${JSON.stringify(`+${suffix}`)} (use +dns, +dnsip, +dnssrv or +dnsaddr)`,
      );
    resolution = r;
  }
  const allowed = kind === 'tcp' ? ['tcp', 'tcp4', 'tcp6'] : ['tcp', 'http', 'https'];
  if (!allowed.includes(base))
    throw new InvalidAddressError(
      raw,
      `unsupported protocol ${JSON.stringify(base)} (${kind === 'tcp' ? 'use tcp' : 'use http or https'})`,
    );
  if (a.host === '' && resolution !== 'none') throw new InvalidAddressError(raw, 'missing host');
  const family = base === 'tcp4' ? 4 : base === 'tcp6' ? 6 : 0;
  const proto = kind === 'tcp' ? 'tcp' : base === 'https' ? 'https' : 'http';
  return { raw, proto, resolution, host: a.host, port: a.port, family };
}

function pick<T>(items: T[], random: () => number): T {
  return items[Math.floor(random() * items.length) % items.length];
}

/** RFC 2782: lowest priority first, then a weighted random choice among those. */
export function pickSrv(records: SrvRecord[], random: () => number = Math.random): SrvRecord {
  const best = Math.min(...records.map((r) => r.priority));
  const candidates = records.filter((r) => r.priority === best);
  const total = candidates.reduce((n, r) => n + r.weight, 0);
  if (total === 0) return pick(candidates, random);
  let x = random() * total;
  for (const r of candidates) {
    x -= r.weight;
    if (x < 0) return r;
  }
  return candidates[candidates.length - 1];
}

/** Resolves a target afresh (no caching): the ingesters behind a name may have changed. */
export async function resolveTarget(
  t: Target,
  resolver: Resolver = systemResolver,
  random: () => number = Math.random,
): Promise<Endpoint> {
  const host = t.host === '' ? '127.0.0.1' : t.host;
  try {
    switch (t.resolution) {
      case 'none':
        return { host, port: t.port, family: t.family };
      case 'dns': {
        const addrs = await resolver.lookup(host, t.family);
        if (addrs.length === 0) throw new ResolveError(`${t.raw}: ${host} has no addresses`);
        return { host: pick(addrs, random), port: t.port, family: t.family };
      }
      case 'dnssrv': {
        // The host is the full SRV name, e.g. `_oklog._tcp.example.com` (OK Log queried the odd
        // `_._tcp.<host>` and then ignored the port it found).
        const recs = await resolver.resolveSrv(host);
        if (recs.length === 0) throw new ResolveError(`${t.raw}: no SRV records for ${host}`);
        const r = pickSrv(recs, random);
        return { host: r.name.replace(/\.$/, ''), port: r.port, family: t.family };
      }
      case 'dnsaddr': {
        const names = await resolver.reverse(host);
        if (names.length === 0) throw new ResolveError(`${t.raw}: no PTR records for ${host}`);
        return { host: pick(names, random), port: t.port, family: t.family };
      }
    }
  } catch (err) {
    if (err instanceof ResolveError) throw err;
    throw new ResolveError(
      `${t.raw}: resolving ${host}: ${(err as Error).message}`,
      { target: t.raw },
      { cause: err },
    );
  }
}

/** The list of targets, shuffled once at start; `rotate` moves on after a failure. */
export class TargetRing {
  private readonly targets: Target[];
  private index = 0;

  constructor(
    targets: Target[],
    private readonly resolver: Resolver = systemResolver,
    private readonly random: () => number = Math.random,
  ) {
    if (targets.length === 0) throw new InvalidAddressError('', 'no targets');
    this.targets = [...targets];
    for (let i = this.targets.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [this.targets[i], this.targets[j]] = [this.targets[j], this.targets[i]];
    }
  }

  get current(): Target {
    return this.targets[this.index];
  }

  get size(): number {
    return this.targets.length;
  }

  rotate(): void {
    this.index = (this.index + 1) % this.targets.length;
  }

  resolve(): Promise<Endpoint> {
    return resolveTarget(this.current, this.resolver, this.random);
  }

  /** Resolves one of the targets afresh (for a sender that connects per target). */
  resolveTarget(t: Target): Promise<Endpoint> {
    return resolveTarget(t, this.resolver, this.random);
  }
}
