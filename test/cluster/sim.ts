// Simulated time and an in-memory network for deterministic gossip tests: timers run in order
// of due time (ties in creation order) and promise chains settle between events; packets and
// stream bytes are delivered after a fixed latency and can be dropped per link and protocol.
import type { Clock, Random, TimerHandle } from '../../node/cluster/clock.ts';
import type { HostPort } from '../../node/cluster/ip.ts';
import type { StreamConn, Transport } from '../../node/cluster/transport.ts';

interface Timer {
  id: number;
  at: number;
  fn: () => void;
}

export class SimClock implements Clock {
  private t: number;
  private seq = 0;
  private readonly timers = new Map<number, Timer>();

  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { id, at: this.t + Math.max(0, ms), fn });
    return { id };
  }

  clearTimeout(h: TimerHandle | null | undefined): void {
    if (h && 'id' in h && typeof h.id === 'number') this.timers.delete(h.id);
  }

  get pending(): number {
    return this.timers.size;
  }

  private next(limit: number): Timer | null {
    let best: Timer | null = null;
    for (const t of this.timers.values()) {
      if (t.at > limit) continue;
      if (!best || t.at < best.at || (t.at === best.at && t.id < best.id)) best = t;
    }
    return best;
  }

  /** Runs every timer due within `ms`, letting promise chains settle after each. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    await settle();
    for (;;) {
      const t = this.next(end);
      if (!t) break;
      this.timers.delete(t.id);
      this.t = Math.max(this.t, t.at);
      t.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }

  /** Advances in steps until `cond` holds; returns the simulated time it took, or throws. */
  async until(cond: () => boolean, maxMs: number, stepMs = 50, what = 'condition'): Promise<number> {
    const start = this.t;
    while (this.t - start <= maxMs) {
      if (cond()) return this.t - start;
      await this.advance(stepMs);
    }
    if (cond()) return this.t - start;
    throw new Error(`simulated ${maxMs} ms passed without ${what}`);
  }
}

/** Lets every pending promise reaction run. */
export function settle(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** A seeded PRNG (mulberry32), so random choices repeat run after run. */
export function seededRandom(seed: number): Random {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Proto = 'udp' | 'tcp';
const key = (a: HostPort) => `${a.host}:${a.port}`;

export type PacketTap = (from: HostPort, to: HostPort, buf: Buffer) => void;

export class SimNetwork {
  readonly endpoints = new Map<string, SimTransport>();
  private readonly blocked = new Set<string>();
  latencyMs = 1;
  lossRate = 0;
  taps: PacketTap[] = [];
  packetsSent = 0;

  constructor(
    readonly clock: SimClock,
    readonly random: Random = seededRandom(1),
  ) {}

  transport(host: string, port = 7946): SimTransport {
    const t = new SimTransport(this, host, port);
    this.endpoints.set(key(t.addr), t);
    return t;
  }

  private pair(a: string, b: string, proto: Proto): string {
    return a < b ? `${proto}|${a}|${b}` : `${proto}|${b}|${a}`;
  }

  /** Drops traffic between two hosts (both protocols unless one is given). */
  block(a: string, b: string, proto?: Proto): void {
    for (const p of proto ? [proto] : (['udp', 'tcp'] as Proto[])) this.blocked.add(this.pair(a, b, p));
  }

  unblock(a: string, b: string, proto?: Proto): void {
    for (const p of proto ? [proto] : (['udp', 'tcp'] as Proto[])) this.blocked.delete(this.pair(a, b, p));
  }

  /** Cuts `host` off from every other host. */
  isolate(host: string, others: string[]): void {
    for (const o of others) if (o !== host) this.block(host, o);
  }

  heal(): void {
    this.blocked.clear();
  }

  isBlocked(a: string, b: string, proto: Proto): boolean {
    return this.blocked.has(this.pair(a, b, proto));
  }

  deliverPacket(from: SimTransport, buf: Buffer, to: HostPort): void {
    this.packetsSent++;
    for (const tap of this.taps) tap(from.addr, to, buf);
    if (this.isBlocked(from.addr.host, to.host, 'udp')) return;
    if (this.lossRate > 0 && this.random() < this.lossRate) return;
    const copy = Buffer.from(buf);
    this.clock.setTimeout(() => {
      const target = this.endpoints.get(key(to));
      if (target && !target.closed) target.packetHandler(copy, from.addr);
    }, this.latencyMs);
  }
}

export class SimTransport implements Transport {
  packetHandler: (buf: Buffer, from: HostPort) => void = () => {};
  streamHandler: (conn: StreamConn) => void = (c) => c.destroy();
  closed = false;
  readonly addr: HostPort;

  constructor(
    private readonly net: SimNetwork,
    host: string,
    readonly port: number,
  ) {
    this.addr = { host, port };
  }

  sendPacket(buf: Buffer, to: HostPort): void {
    if (!this.closed) this.net.deliverPacket(this, buf, to);
  }

  setPacketHandler(fn: (buf: Buffer, from: HostPort) => void): void {
    this.packetHandler = fn;
  }

  setStreamHandler(fn: (conn: StreamConn) => void): void {
    this.streamHandler = fn;
  }

  dial(to: HostPort, timeoutMs: number): Promise<StreamConn> {
    const clock = this.net.clock;
    return new Promise((resolve, reject) => {
      if (this.net.isBlocked(this.addr.host, to.host, 'tcp')) {
        clock.setTimeout(() => reject(new Error(`dial ${key(to)}: timeout`)), timeoutMs);
        return;
      }
      clock.setTimeout(() => {
        const target = this.net.endpoints.get(key(to));
        if (!target || target.closed) {
          reject(new Error(`dial ${key(to)}: connection refused`));
          return;
        }
        const client = new SimConn(this.net, this.addr, to);
        const server = new SimConn(this.net, to, this.addr);
        client.peer = server;
        server.peer = client;
        target.streamHandler(server);
        resolve(client);
      }, this.net.latencyMs);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** One end of an in-memory stream. */
export class SimConn implements StreamConn {
  peer: SimConn | null = null;
  private dataFns: Array<(b: Buffer) => void> = [];
  private closeFns: Array<(err?: Error) => void> = [];
  private pending: Buffer[] = [];
  private closed = false;
  private ending = false;

  constructor(
    private readonly net: SimNetwork,
    private readonly local: HostPort,
    readonly remote: HostPort,
  ) {}

  private linkUp(): boolean {
    return !this.net.isBlocked(this.local.host, this.remote.host, 'tcp');
  }

  write(buf: Buffer): void {
    if (this.closed || this.ending) return;
    const copy = Buffer.from(buf);
    const peer = this.peer;
    this.net.clock.setTimeout(() => {
      if (this.linkUp()) peer?.receive(copy);
    }, this.net.latencyMs);
  }

  receive(buf: Buffer): void {
    if (this.closed) return;
    if (this.dataFns.length === 0) this.pending.push(buf);
    else for (const fn of this.dataFns) fn(buf);
  }

  onData(fn: (chunk: Buffer) => void): void {
    this.dataFns.push(fn);
    const p = this.pending;
    this.pending = [];
    for (const b of p) fn(b);
  }

  onClose(fn: (err?: Error) => void): void {
    if (this.closed) fn();
    else this.closeFns.push(fn);
  }

  private fireClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fn of this.closeFns) fn();
    this.closeFns = [];
  }

  end(): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    const peer = this.peer;
    // After data already in flight: the peer sees the end, then both sides close.
    this.net.clock.setTimeout(() => {
      peer?.fireClose();
      this.fireClose();
    }, this.net.latencyMs);
  }

  destroy(): void {
    const peer = this.peer;
    this.fireClose();
    this.net.clock.setTimeout(() => peer?.fireClose(), this.net.latencyMs);
  }
}
