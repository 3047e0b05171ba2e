// The cluster as the rest of the node sees it: memberlist membership joined with OK Log's peer
// map, behind the `Peers` contract. It also keeps a lone node retrying its `-peer` seeds (DNS
// re-resolved each time, with backoff) until it joins (§11.2 item 8), reconnects to failed
// members so a healed partition converges, and serves `GET /cluster/peers`.
import { randomUUID } from 'node:crypto';
import { isIP, isIPv4 } from 'node:net';
import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { joinHostPort, parseAddr } from '../../shared/addr.ts';
import { type Advertise, calculateAdvertise, type InterfaceMap, isUnroutableIp } from './advertise.ts';
import { type Clock, type Random, randomInt, realClock, type TimerHandle } from './clock.ts';
import { Keyring } from './crypto.ts';
import { hostPortString, isWildcard, unmapIp } from './ip.ts';
import {
  dnsLookupAll,
  GOSSIP_DEFAULTS,
  type Lookup,
  Memberlist,
  type MemberlistConfig,
  type MemberView,
} from './memberlist.ts';
import { clusterMetrics } from './metrics.ts';
import { encodePeerEntry, type PeerEntry, PeerMap, parsePeerEntry, parsePeerMap } from './peermap.ts';
import { type PeerInfo, type PeerRole, type Peers, type PeerType, typeServes } from './peers.ts';
import { clusterRoutes } from './routes.ts';
import { NetTransport, type Transport } from './transport.ts';

export const DEFAULT_CLUSTER_PORT = 7659;
/** Most failed members remembered for reconnection. */
const MAX_FAILED = 1024;
/**
 * Peer-info fetches (push/pulls with members that joined without metadata: Go OK Log nodes) run
 * at most this many at a time; the others wait in a bounded queue rather than for the next
 * periodic push/pull (up to 30 s), so a batch of Go nodes joining together is known in seconds.
 */
const MAX_CONCURRENT_FETCHES = 4;
const MAX_QUEUED_FETCHES = 1024;

/** Protocol timings and sizes that may be tuned (GOSSIP_DEFAULTS otherwise). */
export type GossipTuning = Partial<
  Pick<
    MemberlistConfig,
    | 'probeIntervalMs'
    | 'probeTimeoutMs'
    | 'indirectChecks'
    | 'retransmitMult'
    | 'suspicionMult'
    | 'suspicionMaxTimeoutMult'
    | 'pushPullIntervalMs'
    | 'gossipIntervalMs'
    | 'gossipNodes'
    | 'gossipToTheDeadMs'
    | 'tcpTimeoutMs'
    | 'awarenessMaxMultiplier'
    | 'udpBufferSize'
    | 'enableCompression'
    | 'disableTcpPings'
    | 'maxNodes'
    | 'tombstoneMs'
    | 'maxTombstones'
    | 'maxConcurrentStreams'
    | 'maxConcurrentPushPulls'
    | 'maxInboundStreamBytes'
  >
>;

export interface StartClusterOptions {
  /** The `-cluster` value, e.g. `tcp://0.0.0.0:7659`. */
  bind: string;
  /** `-cluster.advertise-addr` ('' or absent: computed). */
  advertiseAddr?: string;
  /** `-peer` values: `host[:port]`, port defaulting to our own bind port; DNS names allowed. */
  seeds: string[];
  /** `-cluster.key` path ('' or absent: no encryption). */
  keyFile?: string;
  type: PeerType;
  apiPort: number;
  logger: Logger;
  registry: Registry;
  /** Member name; a fresh UUIDv4 by default (as OK Log, per process start). */
  name?: string;
  /** A keyring given directly (tests); wins over keyFile. */
  keyring?: Keyring;
  /** memberlist ≥ 0.4 cluster label; none by default. */
  label?: string;
  gossip?: GossipTuning;
  transport?: Transport;
  clock?: Clock;
  random?: Random;
  lookup?: Lookup;
  interfaces?: () => InterfaceMap;
  defaultRouteInterface?: () => string | null;
  /** Backoff between seed retries while alone (default 1 s doubling to 5 s). */
  seedRetryMinMs?: number;
  seedRetryMaxMs?: number;
  /** How often to try one failed member again (default 10 s), and for how long (default 1 h). */
  reconnectIntervalMs?: number;
  reconnectTimeoutMs?: number;
  /** How long startCluster waits for the first join attempt (default 2 s; it goes on after). */
  joinWaitMs?: number;
}

/** A live member as `GET /cluster/peers` lists it. */
export type ClusterPeer = PeerInfo;

interface Failed {
  host: string;
  port: number;
  since: number;
}

/**
 * A peer entry's API address as `host:port` for a URL: an IPv6 `api_addr` bracketed (it is a bare
 * IP in OK Log's map), an IPv4-mapped one as plain IPv4, brackets a peer may have added removed,
 * and an empty or wildcard one (unusable from here) replaced by the member's gossip address.
 */
export function apiHostPort(e: PeerEntry, gossipHost: string): string {
  let host = e.api_addr.trim();
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  host = unmapIp(host);
  if (isWildcard(host) && gossipHost !== '') host = gossipHost;
  return joinHostPort(host, e.api_port);
}

function nodeJson(m: MemberView) {
  return {
    Name: m.name,
    Addr: m.addr,
    Port: m.port,
    Meta: m.meta.toString('base64'),
    PMin: m.vsn[0] ?? 0,
    PMax: m.vsn[1] ?? 0,
    PCur: m.vsn[2] ?? 0,
    DMin: m.vsn[3] ?? 0,
    DMax: m.vsn[4] ?? 0,
    DCur: m.vsn[5] ?? 0,
  };
}

export class Cluster implements Peers {
  readonly routes: FastifyPluginAsync;
  private stopped = false;
  private readonly timers = new Set<TimerHandle>();
  private readonly wakers = new Set<() => void>();
  private readonly failed = new Map<string, Failed>();
  private readonly fetching = new Set<string>();
  /** Members waiting for a peer-info fetch, in arrival order (`fetchQueued` mirrors it). */
  private readonly fetchQueue: string[] = [];
  private readonly fetchQueued = new Set<string>();
  /** Last known entry of every member, dead ones included, for display only. */
  private readonly lastKnown = new Map<string, PeerEntry>();
  private aloneWarnedAt = Number.NEGATIVE_INFINITY;
  private readonly joinAttempted: Promise<void>;
  private ml!: Memberlist;
  private peerMap!: PeerMap;
  private metrics!: ReturnType<typeof clusterMetrics>;

  constructor(
    readonly name: string,
    readonly type: PeerType,
    readonly advertise: Advertise,
    private readonly apiPort: number,
    private readonly seeds: string[],
    private readonly opts: StartClusterOptions,
    private readonly clock: Clock,
    private readonly random: Random,
    private readonly log: Logger,
    transport: Transport,
    keyring: Keyring | null,
  ) {
    const selfEntry: PeerEntry = { type, api_addr: advertise.ip, api_port: apiPort };
    this.peerMap = new PeerMap({
      self: name,
      selfEntry,
      isLive: (n) => this.isLive(n),
      maxEntries: opts.gossip?.maxNodes ?? GOSSIP_DEFAULTS.maxNodes,
    });
    this.lastKnown.set(name, selfEntry);
    this.metrics = clusterMetrics(opts.registry, {
      size: () => this.ml.numMembers(),
      allMembers: () => this.ml.allMembers(),
      healthScore: () => this.ml.healthScore,
    });
    const cfg: MemberlistConfig = {
      ...GOSSIP_DEFAULTS,
      ...opts.gossip,
      name,
      advertiseAddr: advertise.ip,
      advertisePort: advertise.port,
      bindPort: transport.port,
      keyring,
      label: opts.label ?? '',
    };
    this.ml = new Memberlist(cfg, {
      transport,
      clock,
      random,
      logger: log,
      lookup: opts.lookup ?? dnsLookupAll,
      stats: this.metrics.stats,
      delegate: {
        nodeMeta: () => encodePeerEntry(selfEntry),
        localState: () => this.peerMap.encode(),
        mergeRemoteState: (buf) => this.mergePeerMap(buf),
        notifyMsg: (buf) => this.mergePeerMap(buf),
        notifyJoin: (m) => this.onJoin(m),
        notifyUpdate: (m) => this.onUpdate(m),
        notifyLeave: (m) => this.onLeave(m),
        notifyReap: (m) => {
          if (!this.failed.has(m.name)) this.lastKnown.delete(m.name);
        },
      },
    });
    this.routes = clusterRoutes(() => this);
    this.ml.start();
    this.joinAttempted = this.seedLoop();
    this.every(opts.reconnectIntervalMs ?? 10_000, () => this.reconnect());
  }

  /** Resolves once the first attempt to join the seeds has finished (at once without seeds). */
  get firstJoin(): Promise<void> {
    return this.joinAttempted;
  }

  get memberlist(): Memberlist {
    return this.ml;
  }

  private isLive(name: string): boolean {
    const m = this.ml?.member(name);
    return m !== null && m !== undefined && (m.state === 'alive' || m.state === 'suspect');
  }

  // ---- membership events ----

  private onJoin(m: MemberView): void {
    this.failed.delete(m.name);
    if (m.name === this.name) return;
    const e = this.entryFromMeta(m);
    if (e) this.setEntry(m.name, e);
    else if (!this.peerMap.has(m.name)) this.fetchPeerInfo(m);
    this.log.debug(
      { member: m.name, addr: hostPortString({ host: m.addr, port: m.port }) },
      'cluster: member joined',
    );
  }

  private onUpdate(m: MemberView): void {
    const e = this.entryFromMeta(m);
    if (e) this.setEntry(m.name, e);
  }

  private onLeave(m: MemberView): void {
    this.peerMap.delete(m.name);
    if (m.name === this.name) return;
    if (m.state === 'dead') {
      if (this.failed.size >= MAX_FAILED) {
        const oldest = this.failed.keys().next().value;
        if (oldest !== undefined) this.failed.delete(oldest);
      }
      this.failed.set(m.name, { host: m.addr, port: m.port, since: this.clock.now() });
    } else this.failed.delete(m.name);
    this.log.info(
      { member: m.name, state: m.state },
      `cluster: member ${m.state === 'left' ? 'left' : 'failed'}`,
    );
  }

  private entryFromMeta(m: MemberView): PeerEntry | null {
    if (m.meta.length === 0) return null;
    try {
      return parsePeerEntry(JSON.parse(m.meta.toString('utf8')));
    } catch {
      return null;
    }
  }

  private setEntry(name: string, e: PeerEntry): void {
    if (this.peerMap.set(name, e)) this.lastKnown.set(name, e);
  }

  private mergePeerMap(buf: Buffer): void {
    const remote = parsePeerMap(buf, this.opts.gossip?.maxNodes ?? GOSSIP_DEFAULTS.maxNodes);
    if (!remote) {
      this.metrics.stats.drop('malformed');
      return;
    }
    for (const [name, e] of remote) {
      // Our own members announce themselves in their metadata; that wins over hearsay.
      const m = this.ml.member(name);
      const own = m ? this.entryFromMeta(m) : null;
      if (own) remote.set(name, own);
      else if (this.isLive(name)) this.lastKnown.set(name, e);
    }
    const { ignored } = this.peerMap.merge(remote);
    this.metrics.stalePeerEntries(ignored);
  }

  /** A member without metadata (a Go OK Log node): fetch its entry now rather than in ≤ 30 s. */
  private fetchPeerInfo(m: MemberView): void {
    if (this.stopped || this.fetching.has(m.name) || this.fetchQueued.has(m.name)) return;
    if (this.fetching.size < MAX_CONCURRENT_FETCHES) {
      this.startFetch(m);
      return;
    }
    if (this.fetchQueue.length >= MAX_QUEUED_FETCHES) {
      // Bounded: beyond it the member's entry comes with a periodic push/pull, as in OK Log.
      this.log.debug({ member: m.name }, 'cluster: peer info fetch queue full');
      return;
    }
    this.fetchQueue.push(m.name);
    this.fetchQueued.add(m.name);
  }

  private startFetch(m: MemberView): void {
    this.fetching.add(m.name);
    this.ml
      .pushPullNode({ host: m.addr, port: m.port }, false)
      .catch((err) =>
        this.log.debug({ member: m.name, err: (err as Error).message }, 'cluster: peer info fetch failed'),
      )
      .finally(() => {
        this.fetching.delete(m.name);
        this.nextFetches();
      });
  }

  /** Starts queued fetches while there is room, skipping members known or gone meanwhile. */
  private nextFetches(): void {
    while (!this.stopped && this.fetching.size < MAX_CONCURRENT_FETCHES && this.fetchQueue.length > 0) {
      const name = this.fetchQueue.shift() as string;
      this.fetchQueued.delete(name);
      const m = this.ml.member(name);
      if (!m || !this.isLive(name) || this.peerMap.has(name)) continue;
      this.startFetch(m);
    }
  }

  // ---- seeds and reconnection ----

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopped) {
        resolve();
        return;
      }
      const wake = () => {
        this.wakers.delete(wake);
        this.timers.delete(h);
        this.clock.clearTimeout(h);
        resolve();
      };
      const h = this.clock.setTimeout(wake, ms);
      this.timers.add(h);
      this.wakers.add(wake);
    });
  }

  private every(ms: number, fn: () => Promise<void> | void): void {
    if (ms <= 0) return;
    void (async () => {
      while (!this.stopped) {
        await this.sleep(ms * (0.8 + 0.4 * this.random()));
        if (this.stopped) return;
        try {
          await fn();
        } catch (err) {
          this.log.debug({ err: (err as Error).message }, 'cluster: background task failed');
        }
      }
    })();
  }

  /** Joins through the seeds now; while alone, retries with backoff (DNS re-resolved each time). */
  private async seedLoop(): Promise<void> {
    if (this.seeds.length === 0) return;
    const min = this.opts.seedRetryMinMs ?? 1000;
    const max = this.opts.seedRetryMaxMs ?? 5000;
    const first = this.tryJoin();
    void (async () => {
      await first;
      let backoff = min;
      while (!this.stopped) {
        if (this.ml.numMembers() > 1) {
          backoff = min;
          await this.sleep(max);
          continue;
        }
        await this.sleep(backoff * (0.8 + 0.4 * this.random()));
        if (this.stopped || this.ml.numMembers() > 1) continue;
        await this.tryJoin();
        backoff = Math.min(max, backoff * 2);
      }
    })();
    await first;
  }

  private async tryJoin(): Promise<void> {
    const { joined, errors } = await this.ml.join(this.seeds);
    const ok = joined > 0 && this.ml.numMembers() > 1;
    this.metrics.joinAttempt(ok);
    if (ok) {
      this.log.info({ joined, members: this.ml.numMembers() }, 'cluster: joined');
      this.confirmLater();
      return;
    }
    const now = this.clock.now();
    if (now - this.aloneWarnedAt >= 30_000) {
      this.aloneWarnedAt = now;
      this.log.warn(
        { peers: this.seeds, errors: errors.slice(0, 3) },
        'I appear to be alone in the cluster; retrying -peer',
      );
    } else this.log.debug({ errors: errors.slice(0, 3) }, 'cluster: join attempt failed');
  }

  /**
   * After a (re)join, peers that had us dead refute it with a higher incarnation; one more
   * push/pull with a random member a little later settles both views without waiting for gossip.
   */
  private confirmLater(): void {
    const delay = 2 * (this.opts.gossip?.probeIntervalMs ?? GOSSIP_DEFAULTS.probeIntervalMs);
    void this.sleep(delay).then(async () => {
      if (this.stopped) return;
      const others = this.ml.members().filter((m) => m.name !== this.name);
      if (others.length === 0) return;
      const m = others[randomInt(this.random, others.length)];
      await this.ml.pushPullNode({ host: m.addr, port: m.port }, false).catch(() => {});
    });
  }

  /** Tries one failed (not left) member again, so a healed partition merges. */
  private async reconnect(): Promise<void> {
    const now = this.clock.now();
    const timeout = this.opts.reconnectTimeoutMs ?? 3_600_000;
    // A live member at the same address (a restart under a new name) replaces the failed one.
    const liveAddrs = new Set(this.ml.members().map((m) => `${m.addr}:${m.port}`));
    for (const [name, f] of this.failed) {
      if (now - f.since > timeout || this.isLive(name) || liveAddrs.has(`${f.host}:${f.port}`)) {
        this.failed.delete(name);
        if (!this.ml.member(name)) this.lastKnown.delete(name);
      }
    }
    const list = [...this.failed.values()];
    if (list.length === 0) return;
    const f = list[randomInt(this.random, list.length)];
    await this.ml.pushPullNode({ host: f.host, port: f.port }, true);
    this.confirmLater();
  }

  // ---- Peers ----

  private entryFor(m: MemberView): PeerEntry | undefined {
    return m.name === this.name ? this.peerMap.get(this.name) : this.peerMap.get(m.name);
  }

  selfApiAddr(): string {
    return joinHostPort(this.advertise.ip, this.apiPort);
  }

  current(role: PeerRole): string[] {
    const out: string[] = [];
    if (typeServes(this.type, role)) out.push(joinHostPort(this.advertise.ip, this.apiPort));
    for (const m of this.ml.members()) {
      if (m.name === this.name) continue;
      const e = this.peerMap.get(m.name);
      if (e && typeServes(e.type, role)) out.push(apiHostPort(e, m.addr));
    }
    return out;
  }

  private peerInfo(m: MemberView, e: PeerEntry): PeerInfo {
    return {
      name: m.name,
      type: e.type,
      apiAddr: apiHostPort(e, m.addr),
      gossipAddr: joinHostPort(m.addr, m.port),
      state: m.state,
    };
  }

  /** Every known member with a known type, dead and left ones included until forgotten. */
  members(): PeerInfo[] {
    const out: PeerInfo[] = [];
    for (const m of this.ml.allMembers()) {
      const e = this.entryFor(m) ?? this.lastKnown.get(m.name);
      if (e) out.push(this.peerInfo(m, e));
    }
    return out;
  }

  /** Live members (alive or suspect) whose type and API address are known. */
  livePeers(): ClusterPeer[] {
    const out: ClusterPeer[] = [];
    for (const m of this.ml.members()) {
      const e = this.entryFor(m);
      if (e) out.push(this.peerInfo(m, e));
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Live member count, this node included (`oklog_cluster_size`). */
  size(): number {
    return this.ml.numMembers();
  }

  /** Reference §5.6: the body of `/ingest/_clusterstate` and `/store/_clusterstate`. */
  clusterState(): { self: unknown; members: unknown[]; n: number; delegate: Record<string, PeerEntry> } {
    return {
      self: nodeJson(this.ml.localMember()),
      members: this.ml.members().map(nodeJson),
      n: this.ml.numMembers(),
      delegate: this.peerMap.toJSON(),
    };
  }

  /** Broadcasts our leave and waits up to `timeoutMs` for it to spread. */
  async leave(timeoutMs: number): Promise<void> {
    if (this.stopped) return;
    await this.ml.leave(timeoutMs);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.fetchQueue.length = 0;
    this.fetchQueued.clear();
    for (const w of [...this.wakers]) w();
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers.clear();
    await this.ml.shutdown();
  }
}

/**
 * The host to bind sockets to for a `-cluster` host: an IP literal, else ('' for) every interface,
 * dual-stack. A host name binds every interface too, as memberlist does with a non-IP bind address.
 */
function socketHost(host: string): string {
  return isWildcard(host) || isIP(host) === 0 ? '' : host;
}

function looksLocal(seed: string): boolean {
  const h = seed
    .replace(/^[a-z][a-z0-9+.-]*:\/\//i, '')
    .replace(/:\d+$/, '')
    .replace(/^\[|\]$/g, '');
  return h === 'localhost' || h.startsWith('127.') || h === '::1';
}

/** Starts gossip: bind, choose the advertise address, join the seeds (retrying while alone). */
export async function startCluster(opts: StartClusterOptions): Promise<Cluster> {
  const log = opts.logger.child({ component: 'cluster' });
  const bind = parseAddr(opts.bind, DEFAULT_CLUSTER_PORT);
  const keyring = opts.keyring ?? (opts.keyFile ? Keyring.fromFile(opts.keyFile) : null);
  const clock = opts.clock ?? realClock;
  const random = opts.random ?? Math.random;
  const lookup = opts.lookup ?? dnsLookupAll;
  // Choose the advertise IP before binding, so a bad configuration fails without side effects.
  const pre = await calculateAdvertise({
    bindHost: bind.host,
    bindPort: bind.port,
    advertiseAddr: opts.advertiseAddr,
    lookup,
    interfaces: opts.interfaces,
    defaultRouteInterface: opts.defaultRouteInterface,
    logger: log,
  });
  const transport =
    opts.transport ?? (await NetTransport.listen({ host: socketHost(bind.host), port: bind.port }));
  let chosen = pre;
  if (
    transport.family === 'ipv4' &&
    !isIPv4(pre.ip) &&
    (pre.source === 'private-ip' || pre.source === 'public-ip')
  ) {
    // The kernel gave us IPv4 sockets only (no IPv6): an IPv6 advertise address would be unreachable.
    try {
      chosen = await calculateAdvertise({
        bindHost: bind.host,
        bindPort: bind.port,
        lookup,
        interfaces: opts.interfaces,
        defaultRouteInterface: opts.defaultRouteInterface,
        logger: log,
        ipv4Only: true,
      });
    } catch (err) {
      await transport.close();
      throw err;
    }
  }
  // With port 0 the real port is known only now; an explicit advertise port still wins.
  const explicitPort = opts.advertiseAddr ? parseAddr(opts.advertiseAddr, -1).port : -1;
  const advertise: Advertise = { ...chosen, port: explicitPort > 0 ? explicitPort : transport.port };
  if (opts.seeds.some((s) => !looksLocal(s)) && (isWildcard(advertise.ip) || isUnroutableIp(advertise.ip))) {
    log.warn(
      { advertise: advertise.ip },
      'this node advertises a loopback address but has non-local -peer values; set -cluster.advertise-addr',
    );
  }
  const name = opts.name ?? randomUUID();
  let cluster: Cluster;
  try {
    cluster = new Cluster(
      name,
      opts.type,
      advertise,
      opts.apiPort,
      opts.seeds,
      opts,
      clock,
      random,
      log,
      transport,
      keyring,
    );
  } catch (err) {
    await transport.close();
    throw err;
  }
  log.info(
    {
      name,
      advertise: joinHostPort(advertise.ip, advertise.port),
      source: advertise.source,
      encrypted: !!keyring,
    },
    'cluster: gossip started',
  );
  const wait = opts.joinWaitMs ?? 2000;
  if (opts.seeds.length > 0 && wait > 0) {
    let t: TimerHandle | null = null;
    await Promise.race([cluster.firstJoin, new Promise<void>((r) => (t = clock.setTimeout(r, wait)))]);
    clock.clearTimeout(t);
  }
  return cluster;
}
