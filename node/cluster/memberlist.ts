// SWIM with the Lifeguard refinements, a port of hashicorp/memberlist's state machine (state.go,
// net.go, memberlist.go) onto one event loop: round-robin probes with indirect probes and a TCP
// fallback, local health awareness, suspicion with confirmations, incarnations and refutation,
// left vs dead, a transmit-limited broadcast queue piggybacked on packets, gossip to random
// members, push/pull anti-entropy over TCP and join. Time, randomness and the network are
// injected, so the whole protocol runs deterministically on a simulated network in tests.
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { Awareness } from './awareness.ts';
import { type Clock, type Random, randomInt, shuffle, type TimerHandle } from './clock.ts';
import { ENCRYPT_OVERHEAD, type Keyring } from './crypto.ts';
import { type DropReason, GossipDecodeError, GossipError } from './errors.ts';
import { bytesToIp, type HostPort, hostPortString, ipToBytes } from './ip.ts';
import { MsgWriter } from './msgpack.ts';
import { decodePacket, encodePacket } from './packet.ts';
import { TransmitLimitedQueue } from './queue.ts';
import {
  BudgetLease,
  ByteBudget,
  ConnSource,
  frameStream,
  MAX_STREAM_STATE_BYTES,
  openStream,
  type ValueSource,
} from './stream.ts';
import { Suspicion, suspicionTimeout } from './suspicion.ts';
import type { StreamConn, Transport } from './transport.ts';
import {
  type Alive,
  ackFromFields,
  asStruct,
  type Dead,
  decodeAck,
  decodeAlive,
  decodeDead,
  decodeErr,
  decodeIndirectPing,
  decodeNack,
  decodePing,
  decodePushNodeState,
  decodePushPullHeader,
  decodeSuspect,
  decodeUserMsgHeader,
  encodeAck,
  encodeAlive,
  encodeDead,
  encodeErr,
  encodeIndirectPing,
  encodeNack,
  encodePing,
  encodeSuspect,
  MAX_META_BYTES,
  MsgType,
  makeCompound,
  NodeStateType,
  type Ping,
  type PushNodeState,
  pingFromFields,
  type Suspect,
  writePushNodeState,
  writePushPullHeader,
} from './wire.ts';

export const PROTOCOL_VERSION_MIN = 1;
export const PROTOCOL_VERSION_MAX = 5;
/** Compound framing overheads, as memberlist assumes them. */
const COMPOUND_HEADER_OVERHEAD = 2;
const COMPOUND_OVERHEAD = 2;
const PUSH_PULL_SCALE_THRESHOLD = 32;
/** Share of ProbeTimeout a helper waits for the target's ack before it nacks (see handleIndirectPing). */
const NACK_TIMEOUT_FRACTION = 0.8;

export type MemberState = 'alive' | 'suspect' | 'dead' | 'left';
const STATE_NAMES: MemberState[] = ['alive', 'suspect', 'dead', 'left'];

export interface MemberlistConfig {
  /** Unique member name (OK Log: a UUIDv4 per process start). */
  name: string;
  /** IP literal other members reach us at, and its port. */
  advertiseAddr: string;
  advertisePort: number;
  /** Port assumed for seeds and peers that give none (memberlist uses its bind port). */
  bindPort: number;
  protocolVersion: number;
  delegateProtocolMin: number;
  delegateProtocolMax: number;
  delegateProtocolVersion: number;
  probeIntervalMs: number;
  probeTimeoutMs: number;
  indirectChecks: number;
  retransmitMult: number;
  suspicionMult: number;
  suspicionMaxTimeoutMult: number;
  pushPullIntervalMs: number;
  gossipIntervalMs: number;
  gossipNodes: number;
  gossipToTheDeadMs: number;
  tcpTimeoutMs: number;
  awarenessMaxMultiplier: number;
  udpBufferSize: number;
  enableCompression: boolean;
  disableTcpPings: boolean;
  /** A dead member's address may be taken over by a new member after this long (0: never). */
  deadNodeReclaimMs: number;
  /** Most members tracked; alive messages about further new members are dropped. */
  maxNodes: number;
  /**
   * How long a reaped dead or left member is remembered (its name and incarnation), and how many
   * at most: an `alive` for it at an incarnation not above the remembered one is stale and ignored.
   */
  tombstoneMs: number;
  maxTombstones: number;
  /** Most concurrent inbound streams, and of those, push/pulls (memberlist: 128). */
  maxConcurrentStreams: number;
  maxConcurrentPushPulls: number;
  /** Bytes all inbound streams together may hold (received, decrypted, decompressed). */
  maxInboundStreamBytes: number;
  keyring: Keyring | null;
  /** memberlist ≥ 0.4 label; '' for none (memberlist 0.1/0.2 know no labels). */
  label: string;
}

/** memberlist's DefaultLANConfig (OK Log pinned SuspicionMult 5; memberlist's own default is 4). */
export const LAN_DEFAULTS = {
  protocolVersion: 2,
  delegateProtocolMin: 0,
  delegateProtocolMax: 0,
  delegateProtocolVersion: 0,
  probeIntervalMs: 1000,
  probeTimeoutMs: 500,
  indirectChecks: 3,
  retransmitMult: 4,
  suspicionMult: 4,
  suspicionMaxTimeoutMult: 6,
  pushPullIntervalMs: 30_000,
  gossipIntervalMs: 200,
  gossipNodes: 3,
  gossipToTheDeadMs: 30_000,
  tcpTimeoutMs: 10_000,
  awarenessMaxMultiplier: 8,
  udpBufferSize: 1400,
  enableCompression: true,
  disableTcpPings: false,
  deadNodeReclaimMs: 0,
  maxNodes: 10_000,
  tombstoneMs: 3_600_000,
  maxTombstones: 1024,
  maxConcurrentStreams: 256,
  maxConcurrentPushPulls: 128,
  maxInboundStreamBytes: 64 * 1024 * 1024,
  keyring: null,
  label: '',
} satisfies Partial<MemberlistConfig>;

/**
 * What oklog ships: the LAN defaults with probes every 800 ms (timeout 400 ms) instead of 1 s, so a
 * killed node in a 10-node cluster is dead everywhere in about 5 s rather than 7 (DESIGN.md §8:
 * within 10 s, with margin for a busy machine). Wire-compatible: timings are local choices.
 */
export const GOSSIP_DEFAULTS = { ...LAN_DEFAULTS, probeIntervalMs: 800, probeTimeoutMs: 400 };

/** A member as the rest of the program sees it. */
export interface MemberView {
  name: string;
  addr: string;
  port: number;
  meta: Buffer;
  state: MemberState;
  incarnation: number;
  /** pmin, pmax, pcur, dmin, dmax, dcur. */
  vsn: number[];
}

export interface MemberlistDelegate {
  /** Node metadata gossiped with our alive messages (≤ 512 bytes). */
  nodeMeta?(limit: number): Buffer;
  /** User state sent in push/pull. */
  localState?(join: boolean): Buffer;
  mergeRemoteState?(buf: Buffer, join: boolean): void;
  notifyMsg?(buf: Buffer): void;
  notifyJoin?(m: MemberView): void;
  notifyLeave?(m: MemberView): void;
  notifyUpdate?(m: MemberView): void;
  /** A dead or left member was forgotten (after GossipToTheDeadTime). */
  notifyReap?(m: MemberView): void;
}

export type ProbeResult = 'ack' | 'indirect' | 'tcp' | 'failed';

export interface MemberlistStats {
  drop(reason: DropReason): void;
  probe(result: ProbeResult): void;
  pushPull(direction: 'in' | 'out', ok: boolean): void;
  packet(direction: 'in' | 'out', bytes: number): void;
  streamRejected(): void;
  /** An alive about a member that died or left (tombstoned) was ignored as stale. */
  staleAlive(): void;
}

/** Stats hooks that count nothing (tests, and a Memberlist built without them). */
export const NO_STATS: MemberlistStats = {
  drop: () => {},
  probe: () => {},
  pushPull: () => {},
  packet: () => {},
  streamRejected: () => {},
  staleAlive: () => {},
};

export type Lookup = (host: string) => Promise<string[]>;

export const dnsLookupAll: Lookup = async (host) =>
  (await dnsLookup(host, { all: true })).map((a) => a.address);

interface NodeState {
  name: string;
  addr: Buffer;
  port: number;
  meta: Buffer | null;
  incarnation: number;
  state: number;
  stateChange: number;
  /** Bumped on every state change; a suspicion timer only fires for the state it was made for. */
  gen: number;
  vsn: number[];
}

/** What is kept of a dead or left member after it is reaped. */
interface Tombstone {
  incarnation: number;
  state: number;
  at: number;
  addr: Buffer;
  port: number;
  vsn: number[];
}

interface AckHandler {
  ackFn: (payload: Buffer | null) => void;
  nackFn?: () => void;
  onTimeout?: () => void;
  timer: TimerHandle;
}

export interface RemoteState {
  join: boolean;
  nodes: PushNodeState[];
  userState: Buffer | null;
}

export interface MemberlistDeps {
  transport: Transport;
  clock: Clock;
  random: Random;
  logger: Logger;
  delegate?: MemberlistDelegate;
  stats?: MemberlistStats;
  lookup?: Lookup;
}

function bufEqual(a: Buffer | null, b: Buffer | null): boolean {
  return (a ?? Buffer.alloc(0)).equals(b ?? Buffer.alloc(0));
}

/** memberlist's pushPullScale: slower anti-entropy above 32 members. */
export function pushPullScale(intervalMs: number, n: number): number {
  if (n <= PUSH_PULL_SCALE_THRESHOLD) return intervalMs;
  const mult = Math.ceil(Math.log2(n) - Math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1;
  return mult * intervalMs;
}

/** A seed as memberlist takes it: `[name/]host[:port]`, IPv6 in brackets or bare without port. */
export function parseSeed(seed: string, defaultPort: number): HostPort {
  let s = seed.trim();
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(s);
  if (scheme) s = s.slice(scheme[0].length);
  const slash = s.indexOf('/');
  if (slash >= 0) s = s.slice(slash + 1);
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    if (end < 0) throw new GossipError(`invalid peer address ${JSON.stringify(seed)}`);
    const host = s.slice(1, end);
    const rest = s.slice(end + 1);
    const port = rest.startsWith(':') ? Number(rest.slice(1)) : defaultPort;
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new GossipError(`invalid port in peer address ${JSON.stringify(seed)}`);
    return { host, port };
  }
  const colons = s.split(':').length - 1;
  if (colons === 1) {
    const [host, p] = s.split(':');
    const port = Number(p);
    if (!host || !/^\d+$/.test(p) || port < 1 || port > 65535)
      throw new GossipError(`invalid peer address ${JSON.stringify(seed)}`);
    return { host, port };
  }
  if (s === '') throw new GossipError('empty peer address');
  return { host: s, port: defaultPort };
}

export class Memberlist {
  private readonly cfg: MemberlistConfig;
  private readonly transport: Transport;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly log: Logger;
  private readonly delegate: MemberlistDelegate;
  private readonly stats: MemberlistStats;
  private readonly lookup: Lookup;

  private seqNo = 0;
  private incarnation = 0;
  private nodes: NodeState[] = [];
  private readonly nodeMap = new Map<string, NodeState>();
  private readonly nodeTimers = new Map<string, Suspicion>();
  /** Reaped dead and left members, oldest first (see MemberlistConfig.tombstoneMs). */
  private readonly tombstones = new Map<string, Tombstone>();
  private readonly awareness: Awareness;
  private readonly broadcasts: TransmitLimitedQueue;
  private readonly ackHandlers = new Map<number, AckHandler>();
  private probeIndex = 0;
  private leaving = false;
  private stopped = false;
  private started = false;
  private leaveNotify: (() => void) | null = null;
  private readonly timers = new Set<TimerHandle>();
  private readonly conns = new Set<StreamConn>();
  private streamsInFlight = 0;
  private pushPullsInFlight = 0;
  private readonly streamBudget: ByteBudget;
  private readonly advAddr: Buffer;

  constructor(cfg: MemberlistConfig, deps: MemberlistDeps) {
    this.cfg = cfg;
    this.transport = deps.transport;
    this.clock = deps.clock;
    this.random = deps.random;
    this.log = deps.logger;
    this.delegate = deps.delegate ?? {};
    this.stats = deps.stats ?? NO_STATS;
    this.lookup = deps.lookup ?? dnsLookupAll;
    if (cfg.protocolVersion < PROTOCOL_VERSION_MIN || cfg.protocolVersion > PROTOCOL_VERSION_MAX)
      throw new GossipError(`protocol version ${cfg.protocolVersion} outside 1..5`);
    const adv = ipToBytes(cfg.advertiseAddr);
    if (!adv) throw new GossipError(`advertise address ${JSON.stringify(cfg.advertiseAddr)} is not an IP`);
    this.advAddr = adv;
    this.awareness = new Awareness(cfg.awarenessMaxMultiplier);
    this.streamBudget = new ByteBudget(cfg.maxInboundStreamBytes);
    this.broadcasts = new TransmitLimitedQueue(cfg.retransmitMult, () => this.nodes.length);
  }

  // ---- lifecycle ----

  /** Adds ourselves as alive and starts the probe, gossip and push/pull loops. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.transport.setPacketHandler((buf, from) => this.onPacket(buf, from));
    this.transport.setStreamHandler((conn) => {
      void this.handleConn(conn);
    });
    this.setAlive();
    const c = this.cfg;
    if (c.probeIntervalMs > 0) this.after(randomInt(this.random, c.probeIntervalMs), () => this.probeLoop());
    if (c.gossipIntervalMs > 0 && c.gossipNodes > 0)
      this.after(randomInt(this.random, c.gossipIntervalMs), () => this.gossipLoop());
    if (c.pushPullIntervalMs > 0)
      this.after(randomInt(this.random, c.pushPullIntervalMs), () => this.pushPullLoop());
  }

  get name(): string {
    return this.cfg.name;
  }

  get healthScore(): number {
    return this.awareness.healthScore;
  }

  get hasLeft(): boolean {
    return this.leaving;
  }

  /** Bytes inbound streams hold right now, against `maxInboundStreamBytes`. */
  get inboundStreamBytes(): number {
    return this.streamBudget.inUse;
  }

  /** Stops every loop and timer and closes the transport. Safe to call twice. */
  async shutdown(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers.clear();
    for (const s of this.nodeTimers.values()) s.cancel();
    this.nodeTimers.clear();
    const handlers = [...this.ackHandlers.values()];
    this.ackHandlers.clear();
    for (const h of handlers) {
      this.clock.clearTimeout(h.timer);
      h.onTimeout?.();
    }
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    this.broadcasts.reset();
    await this.transport.close();
  }

  private after(ms: number, fn: () => void): TimerHandle {
    const h = this.clock.setTimeout(() => {
      this.timers.delete(h);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(h);
    return h;
  }

  private cancel(h: TimerHandle | null): void {
    if (!h) return;
    this.clock.clearTimeout(h);
    this.timers.delete(h);
  }

  private probeLoop(): void {
    const start = this.clock.now();
    this.probe()
      .catch((err) => this.log.warn({ err }, 'gossip probe failed'))
      .finally(() => {
        if (this.stopped) return;
        const elapsed = this.clock.now() - start;
        this.after(Math.max(0, this.cfg.probeIntervalMs - elapsed), () => this.probeLoop());
      });
  }

  private gossipLoop(): void {
    try {
      this.gossip();
    } catch (err) {
      this.log.warn({ err }, 'gossip round failed');
    }
    this.after(this.cfg.gossipIntervalMs, () => this.gossipLoop());
  }

  private pushPullLoop(): void {
    this.pushPull()
      .catch((err) => this.log.debug({ err: (err as Error).message }, 'periodic push/pull failed'))
      .finally(() => {
        if (this.stopped) return;
        this.after(pushPullScale(this.cfg.pushPullIntervalMs, this.nodes.length), () => this.pushPullLoop());
      });
  }

  // ---- views ----

  private vsnArray(): number[] {
    const c = this.cfg;
    return [
      PROTOCOL_VERSION_MIN,
      PROTOCOL_VERSION_MAX,
      c.protocolVersion,
      c.delegateProtocolMin,
      c.delegateProtocolMax,
      c.delegateProtocolVersion,
    ];
  }

  private view(n: NodeState): MemberView {
    return {
      name: n.name,
      addr: bytesToIp(n.addr) ?? '',
      port: n.port,
      meta: n.meta ?? Buffer.alloc(0),
      state: STATE_NAMES[n.state] ?? 'dead',
      incarnation: n.incarnation,
      vsn: [...n.vsn],
    };
  }

  /** Every member we know of, dead and left ones included until they are reaped. */
  allMembers(): MemberView[] {
    return this.nodes.map((n) => this.view(n));
  }

  /** Members not dead or left (memberlist's Members()). */
  members(): MemberView[] {
    return this.nodes.filter((n) => !this.deadOrLeft(n)).map((n) => this.view(n));
  }

  numMembers(): number {
    let n = 0;
    for (const s of this.nodes) if (!this.deadOrLeft(s)) n++;
    return n;
  }

  member(name: string): MemberView | null {
    const n = this.nodeMap.get(name);
    return n ? this.view(n) : null;
  }

  localMember(): MemberView {
    const me = this.nodeMap.get(this.cfg.name);
    if (!me) throw new GossipError('memberlist not started');
    return this.view(me);
  }

  private deadOrLeft(n: NodeState): boolean {
    return n.state === NodeStateType.dead || n.state === NodeStateType.left;
  }

  private addrOf(n: NodeState): HostPort {
    return { host: bytesToIp(n.addr) ?? '0.0.0.0', port: n.port };
  }

  private nextSeq(): number {
    this.seqNo = (this.seqNo + 1) >>> 0;
    return this.seqNo;
  }

  // ---- sending ----

  private overheadBytes(): number {
    let o = 0;
    if (this.cfg.keyring) o += ENCRYPT_OVERHEAD;
    if (this.cfg.label) o += 2 + Buffer.byteLength(this.cfg.label);
    return o;
  }

  private getBroadcasts(overhead: number, limit: number): Buffer[] {
    return this.broadcasts.getBroadcasts(overhead, limit);
  }

  /**
   * Sends one message, piggybacking queued broadcasts in a compound when there are any. The
   * message's own length entry in the compound header is counted too (memberlist forgets it and
   * may send UDPBufferSize + 2 bytes), so no packet exceeds UDPBufferSize before its CRC header.
   */
  private sendMsg(to: HostPort, msg: Buffer, node: NodeState | null): void {
    const avail =
      this.cfg.udpBufferSize -
      msg.length -
      COMPOUND_HEADER_OVERHEAD -
      COMPOUND_OVERHEAD -
      this.overheadBytes();
    const extra = this.getBroadcasts(COMPOUND_OVERHEAD, avail);
    if (extra.length === 0) this.rawSendPacket(to, node, msg);
    else this.rawSendPacket(to, node, makeCompound([msg, ...extra.slice(0, 254)]));
  }

  private rawSendPacket(to: HostPort, node: NodeState | null, msg: Buffer): void {
    const buf = encodePacket(msg, {
      compress: this.cfg.enableCompression,
      crc: node !== null && node.vsn[1] >= 5,
      keyring: this.cfg.keyring,
      label: this.cfg.label,
    });
    this.stats.packet('out', buf.length);
    this.transport.sendPacket(buf, to);
  }

  private queueBroadcast(name: string, msg: Buffer, finished?: () => void): void {
    this.broadcasts.queue({ name, msg, finished });
  }

  private get streamSec() {
    return { compress: this.cfg.enableCompression, keyring: this.cfg.keyring, label: this.cfg.label };
  }

  // ---- receiving packets ----

  private dropped(err: unknown, context: string): void {
    if (err instanceof GossipDecodeError) {
      this.stats.drop(err.reason);
      this.log.debug({ reason: err.reason, err: err.message }, `gossip: dropped ${context}`);
    } else {
      this.stats.drop('unexpected');
      this.log.warn({ err }, `gossip: failed to handle ${context}`);
    }
  }

  private onPacket(buf: Buffer, from: HostPort): void {
    if (this.stopped) return;
    this.stats.packet('in', buf.length);
    let decoded: ReturnType<typeof decodePacket>;
    try {
      decoded = decodePacket(buf, { keyring: this.cfg.keyring, label: this.cfg.label });
    } catch (err) {
      this.dropped(err, `packet from ${hostPortString(from)}`);
      return;
    }
    for (const r of decoded.dropped) this.stats.drop(r);
    for (const m of decoded.messages) {
      try {
        this.handleMessage(m.type, m.body, from);
      } catch (err) {
        this.dropped(err, `message type ${m.type} from ${hostPortString(from)}`);
      }
    }
  }

  private handleMessage(type: number, body: Buffer, from: HostPort): void {
    switch (type) {
      case MsgType.ping:
        this.handlePing(body, from);
        break;
      case MsgType.indirectPing:
        this.handleIndirectPing(body, from);
        break;
      case MsgType.ack: {
        const ack = decodeAck(body);
        this.invokeAck(ack.seqNo, ack.payload);
        break;
      }
      case MsgType.nack:
        this.invokeNack(decodeNack(body).seqNo);
        break;
      case MsgType.suspect:
        this.suspectNode(decodeSuspect(body));
        break;
      case MsgType.alive: {
        const a = decodeAlive(body);
        if (a.port === 0) a.port = this.cfg.bindPort;
        this.aliveNode(a, null, false);
        break;
      }
      case MsgType.dead:
        this.deadNode(decodeDead(body));
        break;
      case MsgType.user:
        this.delegate.notifyMsg?.(Buffer.from(body));
        break;
      default:
        throw new GossipDecodeError('unknown_type', `message type ${type} not supported`);
    }
  }

  private handlePing(body: Buffer, from: HostPort): void {
    const p = decodePing(body);
    if (p.node !== '' && p.node !== this.cfg.name) {
      throw new GossipDecodeError('unexpected', `ping for unexpected node ${p.node}`);
    }
    const to =
      p.sourceAddr && p.sourcePort
        ? { host: bytesToIp(p.sourceAddr) ?? from.host, port: p.sourcePort }
        : from;
    const node = p.sourceNode ? (this.nodeMap.get(p.sourceNode) ?? null) : null;
    this.sendMsg(to, encodeAck({ seqNo: p.seqNo, payload: null }), node);
  }

  private handleIndirectPing(body: Buffer, from: HostPort): void {
    const ind = decodeIndirectPing(body);
    const port = ind.port === 0 ? this.cfg.bindPort : ind.port;
    const localSeq = this.nextSeq();
    const ping: Ping = {
      seqNo: localSeq,
      node: ind.node,
      sourceAddr: this.advAddr,
      sourcePort: this.cfg.advertisePort,
      sourceNode: this.cfg.name,
    };
    const replyTo =
      ind.sourceAddr && ind.sourcePort
        ? { host: bytesToIp(ind.sourceAddr) ?? from.host, port: ind.sourcePort }
        : from;
    const requester = ind.sourceNode ? (this.nodeMap.get(ind.sourceNode) ?? null) : null;
    let nackTimer: TimerHandle | null = null;
    this.setAckHandler(
      localSeq,
      () => {
        this.cancel(nackTimer);
        this.sendMsg(replyTo, encodeAck({ seqNo: ind.seqNo, payload: null }), requester);
      },
      undefined,
      this.cfg.probeTimeoutMs,
    );
    const target = { host: bytesToIp(ind.target) ?? '0.0.0.0', port };
    this.sendMsg(target, encodePing(ping), this.nodeMap.get(ind.node) ?? null);
    if (ind.nack) {
      // memberlist nacks after a full ProbeTimeout, which puts the nack at the requester's probe
      // deadline plus a round trip (ProbeTimeout direct wait + ProbeTimeout here = ProbeInterval):
      // it always comes too late to count, and every failed probe of a really dead member then
      // raises the requester's health score as if the fault were its own. Nacking at 80% of
      // ProbeTimeout leaves a fifth of it for the round trip, for our requesters and Go's alike.
      nackTimer = this.after(Math.floor(this.cfg.probeTimeoutMs * NACK_TIMEOUT_FRACTION), () => {
        this.sendMsg(replyTo, encodeNack({ seqNo: ind.seqNo }), requester);
      });
    }
  }

  private setAckHandler(
    seq: number,
    ackFn: (payload: Buffer | null) => void,
    nackFn: (() => void) | undefined,
    timeoutMs: number,
    onTimeout?: () => void,
  ): void {
    const timer = this.clock.setTimeout(() => {
      if (this.ackHandlers.get(seq)?.timer === timer) this.ackHandlers.delete(seq);
      onTimeout?.();
    }, timeoutMs);
    this.ackHandlers.set(seq, { ackFn, nackFn, onTimeout, timer });
  }

  private invokeAck(seq: number, payload: Buffer | null): void {
    const h = this.ackHandlers.get(seq);
    if (!h) return;
    this.ackHandlers.delete(seq);
    this.clock.clearTimeout(h.timer);
    h.ackFn(payload);
  }

  private invokeNack(seq: number): void {
    this.ackHandlers.get(seq)?.nackFn?.();
  }

  // ---- failure detection ----

  private async probe(): Promise<void> {
    let numCheck = 0;
    for (;;) {
      if (numCheck >= this.nodes.length) return;
      if (this.probeIndex >= this.nodes.length) {
        this.resetNodes();
        this.probeIndex = 0;
        numCheck++;
        continue;
      }
      const node = this.nodes[this.probeIndex++];
      if (node.name === this.cfg.name || this.deadOrLeft(node)) {
        numCheck++;
        continue;
      }
      await this.probeNode(node);
      return;
    }
  }

  /** Probes one member: direct ping, then indirect pings and a TCP ping; suspect it on silence. */
  private async probeNode(node: NodeState): Promise<void> {
    const cfg = this.cfg;
    const probeInterval = this.awareness.scaleTimeout(cfg.probeIntervalMs);
    const snap = { name: node.name, incarnation: node.incarnation, state: node.state, vsn: [...node.vsn] };
    const to = this.addrOf(node);
    const ping: Ping = {
      seqNo: this.nextSeq(),
      node: node.name,
      sourceAddr: this.advAddr,
      sourcePort: cfg.advertisePort,
      sourceNode: cfg.name,
    };
    let acked = false;
    let timedOut = false;
    let nacks = 0;
    let wake: (() => void) | null = null;
    const poke = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    this.setAckHandler(
      ping.seqNo,
      () => {
        acked = true;
        poke();
      },
      () => {
        nacks++;
      },
      probeInterval,
      () => {
        timedOut = true;
        poke();
      },
    );
    const waitUntil = (ms: number | null) =>
      new Promise<void>((resolve) => {
        if (acked || timedOut) {
          resolve();
          return;
        }
        let t: TimerHandle | null = null;
        wake = () => {
          if (t) this.clock.clearTimeout(t);
          resolve();
        };
        if (ms !== null)
          t = this.clock.setTimeout(() => {
            wake = null;
            resolve();
          }, ms);
      });
    const deadline = this.clock.now() + probeInterval;
    let delta = 0;
    try {
      if (snap.state === NodeStateType.alive) {
        this.sendMsg(to, encodePing(ping), node);
      } else {
        const sus = encodeSuspect({ incarnation: snap.incarnation, node: snap.name, from: cfg.name });
        this.rawSendPacket(to, node, makeCompound([encodePing(ping), sus]));
      }
      delta = -1;
      await waitUntil(cfg.probeTimeoutMs);
      if (acked) {
        this.stats.probe('ack');
        return;
      }
      if (this.stopped) return;

      // Indirect probes through up to IndirectChecks random live members, and a TCP ping.
      const peers = this.kRandomNodes(
        cfg.indirectChecks,
        (n) => n.name === cfg.name || n.name === snap.name || n.state !== NodeStateType.alive,
      );
      let expectedNacks = 0;
      for (const peer of peers) {
        const nack = peer.vsn[1] >= 4;
        if (nack) expectedNacks++;
        const ind = encodeIndirectPing({
          seqNo: ping.seqNo,
          target: node.addr,
          port: node.port,
          node: snap.name,
          nack,
          sourceAddr: this.advAddr,
          sourcePort: cfg.advertisePort,
          sourceNode: cfg.name,
        });
        this.sendMsg(this.addrOf(peer), ind, peer);
      }
      const fallback =
        !cfg.disableTcpPings && snap.vsn[1] >= 3
          ? this.sendPingAndWaitForAck(to, ping, deadline).catch((err) => {
              this.log.debug(
                { err: (err as Error).message, node: snap.name },
                'gossip: TCP fallback ping failed',
              );
              return false;
            })
          : Promise.resolve(false);
      await waitUntil(null);
      if (acked) {
        this.stats.probe('indirect');
        return;
      }
      if (await fallback) {
        this.log.warn(
          { node: snap.name },
          'gossip: reached member over TCP but not UDP; the network may be misconfigured',
        );
        this.stats.probe('tcp');
        return;
      }
      if (this.stopped) return;
      delta = expectedNacks > 0 ? Math.max(0, expectedNacks - nacks) : 1;
      this.stats.probe('failed');
      this.log.info({ node: snap.name }, 'gossip: suspect member has failed, no acks received');
      this.suspectNode({ incarnation: snap.incarnation, node: snap.name, from: cfg.name });
    } finally {
      this.awareness.applyDelta(delta);
    }
  }

  /** TCP fallback ping; resolves false when the member cannot be reached before `deadline`. */
  private async sendPingAndWaitForAck(to: HostPort, ping: Ping, deadline: number): Promise<boolean> {
    const timeout = deadline - this.clock.now();
    if (timeout <= 0) return false;
    let conn: StreamConn;
    try {
      conn = await this.transport.dial(to, timeout);
    } catch {
      return false;
    }
    this.trackConn(conn, Math.max(1, deadline - this.clock.now()));
    try {
      conn.write(frameStream(encodePing(ping), this.streamSec));
      const { type, source } = await openStream(new ConnSource(conn), this.cfg);
      if (type !== MsgType.ack)
        throw new GossipError(`unexpected message type ${type} in reply to a TCP ping`);
      const ack = ackFromFields(asStruct(await source.readValue(), 'ack'));
      if (ack.seqNo !== ping.seqNo)
        throw new GossipError(`sequence number from ack (${ack.seqNo}) doesn't match ping (${ping.seqNo})`);
      return true;
    } finally {
      conn.end();
    }
  }

  private trackConn(conn: StreamConn, deadlineMs: number): void {
    if (this.stopped) {
      conn.destroy();
      return;
    }
    this.conns.add(conn);
    const t = this.after(deadlineMs, () => conn.destroy());
    conn.onClose(() => {
      this.cancel(t);
      this.conns.delete(conn);
    });
  }

  /** Removes dead and left members older than GossipToTheDeadTime and reshuffles the rest. */
  private resetNodes(): void {
    const now = this.clock.now();
    const keep: NodeState[] = [];
    for (const n of this.nodes) {
      if (this.deadOrLeft(n) && now - n.stateChange > this.cfg.gossipToTheDeadMs) {
        this.nodeMap.delete(n.name);
        this.nodeTimers.get(n.name)?.cancel();
        this.nodeTimers.delete(n.name);
        this.bury(n, now);
        this.delegate.notifyReap?.(this.view(n));
      } else keep.push(n);
    }
    this.nodes = shuffle(this.random, keep);
    for (const [name, t] of this.tombstones) {
      if (now - t.at <= this.cfg.tombstoneMs) break; // oldest first: the rest are younger
      this.tombstones.delete(name);
    }
  }

  /**
   * Remembers a reaped member. Without it a stale push/pull or alive (from a peer that missed the
   * death) at the old incarnation would be taken for a new member once we have forgotten it, and
   * routed to again until it is declared dead a second time. Safe: an OK Log node that restarts
   * has a new name, and a live member that was wrongly declared dead refutes with a higher
   * incarnation (told so by the dead entries our push/pulls carry, see localStateBuffer).
   */
  private bury(n: NodeState, now: number): void {
    if (this.cfg.maxTombstones <= 0 || this.cfg.tombstoneMs <= 0) return;
    this.tombstones.delete(n.name);
    this.tombstones.set(n.name, {
      incarnation: n.incarnation,
      state: n.state,
      at: now,
      addr: n.addr,
      port: n.port,
      vsn: [...n.vsn],
    });
    while (this.tombstones.size > this.cfg.maxTombstones) {
      const oldest = this.tombstones.keys().next().value;
      if (oldest === undefined) break;
      this.tombstones.delete(oldest);
    }
  }

  /** The tombstone of a reaped member, if it is still remembered. */
  private tombstone(name: string): Tombstone | undefined {
    const t = this.tombstones.get(name);
    if (t && this.clock.now() - t.at > this.cfg.tombstoneMs) {
      this.tombstones.delete(name);
      return undefined;
    }
    return t;
  }

  /** Whether `name` is a dead or left member forgotten by the member list but still remembered. */
  isTombstoned(name: string): boolean {
    return !this.nodeMap.has(name) && this.tombstone(name) !== undefined;
  }

  private kRandomNodes(k: number, exclude: (n: NodeState) => boolean): NodeState[] {
    const n = this.nodes.length;
    const out: NodeState[] = [];
    for (let i = 0; i < 3 * n && out.length < k; i++) {
      const node = this.nodes[randomInt(this.random, n)];
      if (exclude(node) || out.includes(node)) continue;
      out.push(node);
    }
    return out;
  }

  // ---- gossip and anti-entropy ----

  private gossip(): void {
    const now = this.clock.now();
    const targets = this.kRandomNodes(this.cfg.gossipNodes, (n) => {
      if (n.name === this.cfg.name) return true;
      if (n.state === NodeStateType.alive || n.state === NodeStateType.suspect) return false;
      if (n.state === NodeStateType.dead) return now - n.stateChange > this.cfg.gossipToTheDeadMs;
      return true;
    });
    const avail = this.cfg.udpBufferSize - COMPOUND_HEADER_OVERHEAD - this.overheadBytes();
    for (const node of targets) {
      const msgs = this.getBroadcasts(COMPOUND_OVERHEAD, avail);
      if (msgs.length === 0) return;
      const to = this.addrOf(node);
      if (msgs.length === 1) this.rawSendPacket(to, node, msgs[0]);
      else this.rawSendPacket(to, node, makeCompound(msgs.slice(0, 255)));
    }
  }

  private async pushPull(): Promise<void> {
    const [node] = this.kRandomNodes(1, (n) => n.name === this.cfg.name || n.state !== NodeStateType.alive);
    if (!node) return;
    await this.pushPullNode(this.addrOf(node), false);
  }

  /** A full state exchange with one member (join when `join`). */
  async pushPullNode(to: HostPort, join: boolean): Promise<void> {
    let remote: RemoteState;
    try {
      remote = await this.sendAndReceiveState(to, join);
    } catch (err) {
      this.stats.pushPull('out', false);
      if (err instanceof GossipDecodeError) this.stats.drop(err.reason);
      throw err;
    }
    this.stats.pushPull('out', true);
    this.mergeRemoteState(remote);
  }

  private localStateBuffer(join: boolean): Buffer {
    const user = this.delegate.localState?.(join) ?? null;
    // Tombstones go out as the dead (or left) members they were, as memberlist sends members not
    // yet reaped: a peer still holding one alive suspects it (and, if it lives, it refutes with a
    // higher incarnation, which we accept); a peer that never knew it ignores the entry.
    const buried: PushNodeState[] = [];
    const room = Math.max(0, this.cfg.maxNodes - this.nodes.length);
    const now = this.clock.now();
    for (const [name, t] of this.tombstones) {
      if (buried.length >= room) break;
      if (now - t.at > this.cfg.tombstoneMs || this.nodeMap.has(name)) continue;
      buried.push({
        name,
        addr: t.addr,
        port: t.port,
        meta: null,
        incarnation: t.incarnation,
        state: t.state,
        vsn: Buffer.from(t.vsn),
      });
    }
    const count = this.nodes.length + buried.length;
    const w = new MsgWriter(256 + count * 128 + (user?.length ?? 0));
    w.byte(MsgType.pushPull);
    writePushPullHeader(w, { nodes: count, userStateLen: user?.length ?? 0, join });
    for (const b of buried) writePushNodeState(w, b);
    for (const n of this.nodes) {
      writePushNodeState(w, {
        name: n.name,
        addr: n.addr,
        port: n.port,
        meta: n.meta,
        incarnation: n.incarnation,
        state: n.state,
        vsn: Buffer.from(n.vsn),
      });
    }
    if (user) w.bytes(user);
    return frameStream(w.finish(), this.streamSec);
  }

  private async sendAndReceiveState(to: HostPort, join: boolean): Promise<RemoteState> {
    const conn = await this.transport.dial(to, this.cfg.tcpTimeoutMs);
    this.trackConn(conn, this.cfg.tcpTimeoutMs);
    try {
      conn.write(this.localStateBuffer(join));
      const { type, source } = await openStream(new ConnSource(conn), this.cfg);
      if (type === MsgType.err) {
        const e = decodeErr(asStruct(await source.readValue(), 'error'));
        throw new GossipError(`remote error: ${e.error}`, { peer: hostPortString(to) });
      }
      if (type !== MsgType.pushPull)
        throw new GossipError(`received message type ${type}, expected push/pull`, {
          peer: hostPortString(to),
        });
      return await this.readRemoteState(source);
    } finally {
      conn.end();
    }
  }

  private async readRemoteState(source: ValueSource): Promise<RemoteState> {
    const h = decodePushPullHeader(asStruct(await source.readValue(), 'push/pull header'));
    if (h.nodes < 0 || h.nodes > this.cfg.maxNodes)
      throw new GossipDecodeError('too_large', `push/pull with ${h.nodes} nodes`);
    if (h.userStateLen < 0 || h.userStateLen > MAX_STREAM_STATE_BYTES)
      throw new GossipDecodeError('too_large', `push/pull user state of ${h.userStateLen} bytes`);
    const nodes: PushNodeState[] = [];
    for (let i = 0; i < h.nodes; i++) {
      const n = decodePushNodeState(asStruct(await source.readValue(), 'push/pull node state'));
      if (n.port === 0) n.port = this.cfg.bindPort;
      nodes.push(n);
    }
    const userState = h.userStateLen > 0 ? Buffer.from(await source.readExact(h.userStateLen)) : null;
    return { join: h.join, nodes, userState };
  }

  private mergeRemoteState(remote: RemoteState): void {
    this.verifyProtocol(remote.nodes);
    this.mergeState(remote.nodes);
    if (remote.userState && this.delegate.mergeRemoteState) {
      this.delegate.mergeRemoteState(remote.userState, remote.join);
    }
  }

  /**
   * memberlist's verifyProtocol: every alive member must speak a version everyone understands.
   * Members that never told their versions (very old peers, or forged alives) constrain nothing:
   * Go counts them as version 0, which makes every later push/pull fail. Local members were
   * checked when admitted, so besides the remote ones only we ourselves are checked.
   */
  private verifyProtocol(remote: PushNodeState[]): void {
    const known = (v: ArrayLike<number>) => v.length >= 6 && (v[0] !== 0 || v[1] !== 0);
    let maxpmin = 0;
    let minpmax = 255;
    let maxdmin = 0;
    let mindmax = 255;
    const widen = (v: ArrayLike<number>) => {
      maxpmin = Math.max(maxpmin, v[0]);
      minpmax = Math.min(minpmax, v[1]);
      maxdmin = Math.max(maxdmin, v[3]);
      mindmax = Math.min(mindmax, v[4]);
    };
    for (const r of remote) if (r.state === NodeStateType.alive && known(r.vsn)) widen(r.vsn);
    for (const n of this.nodes) if (n.state === NodeStateType.alive && known(n.vsn)) widen(n.vsn);
    const check = (name: string, v: ArrayLike<number>) => {
      if (v[2] < maxpmin || v[2] > minpmax)
        throw new GossipError(
          `member ${name} protocol version (${v[2]}) is incompatible: [${maxpmin}, ${minpmax}]`,
        );
      if (v[5] < maxdmin || v[5] > mindmax)
        throw new GossipError(
          `member ${name} delegate protocol version (${v[5]}) is incompatible: [${maxdmin}, ${mindmax}]`,
        );
    };
    for (const r of remote) if (r.state === NodeStateType.alive && known(r.vsn)) check(r.name, r.vsn);
    const me = this.nodeMap.get(this.cfg.name);
    if (me) check(me.name, me.vsn);
  }

  private mergeState(remote: PushNodeState[]): void {
    for (const r of remote) {
      switch (r.state) {
        case NodeStateType.alive:
          this.aliveNode(
            {
              incarnation: r.incarnation,
              node: r.name,
              addr: r.addr,
              port: r.port,
              meta: r.meta,
              vsn: r.vsn,
            },
            null,
            false,
          );
          break;
        case NodeStateType.left:
          this.deadNode({ incarnation: r.incarnation, node: r.name, from: r.name });
          break;
        case NodeStateType.dead:
        // A member another node believes dead is only suspected here, so it may refute.
        case NodeStateType.suspect:
          this.suspectNode({ incarnation: r.incarnation, node: r.name, from: this.cfg.name });
          break;
        default:
          break;
      }
    }
  }

  // ---- inbound streams ----

  private async handleConn(conn: StreamConn): Promise<void> {
    if (this.stopped || this.streamsInFlight >= this.cfg.maxConcurrentStreams) {
      this.stats.streamRejected();
      conn.destroy();
      return;
    }
    if (this.streamBudget.available === 0) {
      this.stats.drop('budget');
      conn.destroy();
      return;
    }
    this.streamsInFlight++;
    this.trackConn(conn, this.cfg.tcpTimeoutMs);
    const peer = hostPortString(conn.remote);
    const lease = new BudgetLease(this.streamBudget);
    try {
      let opened: Awaited<ReturnType<typeof openStream>>;
      try {
        opened = await openStream(new ConnSource(conn, undefined, lease), this.cfg, lease);
      } catch (err) {
        this.dropped(err, `stream from ${peer}`);
        if (err instanceof GossipDecodeError && err.reason !== 'truncated')
          conn.write(frameStream(encodeErr({ error: err.message }), this.streamSec));
        return;
      }
      const { type, source } = opened;
      switch (type) {
        case MsgType.pushPull: {
          if (this.pushPullsInFlight >= this.cfg.maxConcurrentPushPulls) {
            this.stats.streamRejected();
            this.log.warn('gossip: too many pending push/pull requests');
            return;
          }
          this.pushPullsInFlight++;
          try {
            const remote = await this.readRemoteState(source);
            // Merge first (memberlist replies first): when the initiator's state calls us dead,
            // the reply then already carries our refutation, and the initiator takes us back in
            // this very exchange instead of waiting for gossip to bring the refutation. A merge
            // that fails (incompatible versions) still gets our state, as memberlist's does.
            let mergeErr: unknown = null;
            try {
              this.mergeRemoteState(remote);
            } catch (err) {
              mergeErr = err;
            }
            conn.write(this.localStateBuffer(remote.join));
            if (mergeErr) throw mergeErr;
            this.stats.pushPull('in', true);
          } catch (err) {
            this.stats.pushPull('in', false);
            throw err;
          } finally {
            this.pushPullsInFlight--;
          }
          return;
        }
        case MsgType.ping: {
          const p = pingFromFields(asStruct(await source.readValue(), 'ping'));
          if (p.node !== '' && p.node !== this.cfg.name) {
            this.stats.drop('unexpected');
            return;
          }
          conn.write(frameStream(encodeAck({ seqNo: p.seqNo, payload: null }), this.streamSec));
          return;
        }
        case MsgType.user: {
          const h = decodeUserMsgHeader(asStruct(await source.readValue(), 'user message header'));
          if (h.userMsgLen < 0 || h.userMsgLen > MAX_STREAM_STATE_BYTES)
            throw new GossipDecodeError('too_large', `user message of ${h.userMsgLen} bytes`);
          if (h.userMsgLen > 0) this.delegate.notifyMsg?.(Buffer.from(await source.readExact(h.userMsgLen)));
          return;
        }
        default:
          throw new GossipDecodeError('unknown_type', `stream message type ${type} not supported`);
      }
    } catch (err) {
      if (err instanceof GossipError && !(err instanceof GossipDecodeError)) {
        this.log.debug({ err: err.message, peer }, 'gossip: stream failed');
      } else this.dropped(err, `stream from ${peer}`);
    } finally {
      this.streamsInFlight--;
      lease.release();
      conn.end();
    }
  }

  // ---- state transitions ----

  private setAlive(): void {
    const meta = this.delegate.nodeMeta?.(MAX_META_BYTES) ?? Buffer.alloc(0);
    if (meta.length > MAX_META_BYTES)
      throw new GossipError(`node metadata of ${meta.length} bytes exceeds 512`);
    this.aliveNode(
      {
        incarnation: this.nextIncarnation(),
        node: this.cfg.name,
        addr: this.advAddr,
        port: this.cfg.advertisePort,
        meta,
        vsn: Buffer.from(this.vsnArray()),
      },
      null,
      true,
    );
  }

  /** Re-announces ourselves with fresh metadata from the delegate (memberlist's UpdateNode). */
  updateNode(): void {
    const me = this.nodeMap.get(this.cfg.name);
    if (!me || this.stopped) return;
    const meta = this.delegate.nodeMeta?.(MAX_META_BYTES) ?? Buffer.alloc(0);
    if (meta.length > MAX_META_BYTES)
      throw new GossipError(`node metadata of ${meta.length} bytes exceeds 512`);
    this.aliveNode(
      {
        incarnation: this.nextIncarnation(),
        node: this.cfg.name,
        addr: me.addr,
        port: me.port,
        meta,
        vsn: Buffer.from(this.vsnArray()),
      },
      null,
      true,
    );
  }

  /** uint32 on the wire: wraps as Go's does. */
  private nextIncarnation(): number {
    this.incarnation = (this.incarnation + 1) >>> 0;
    return this.incarnation;
  }

  private refute(me: NodeState, accusedInc: number): void {
    let inc = this.nextIncarnation();
    if (accusedInc >= inc) {
      this.incarnation = (accusedInc + 1) >>> 0;
      inc = this.incarnation;
    }
    me.incarnation = inc;
    this.awareness.applyDelta(1);
    const a: Alive = {
      incarnation: inc,
      node: me.name,
      addr: me.addr,
      port: me.port,
      meta: me.meta,
      vsn: Buffer.from(me.vsn),
    };
    this.queueBroadcast(me.name, encodeAlive(a));
  }

  private clearSuspicion(name: string): void {
    const s = this.nodeTimers.get(name);
    if (s) {
      s.cancel();
      this.nodeTimers.delete(name);
    }
  }

  private aliveNode(a: Alive, notify: (() => void) | null, bootstrap: boolean): void {
    if (this.leaving && a.node === this.cfg.name) return;
    if (a.vsn.length >= 3) {
      const [pmin, pmax, pcur, dmin, dmax, dcur] = a.vsn;
      if (
        pmin === 0 ||
        pmax === 0 ||
        pmin > pmax ||
        pcur < pmin ||
        pcur > pmax ||
        dmin > dmax ||
        dcur > dmax ||
        dcur < dmin
      ) {
        this.log.warn({ node: a.node }, 'gossip: ignoring alive message with invalid protocol versions');
        return;
      }
    }
    let state = this.nodeMap.get(a.node);
    let updatesNode = false;
    const isLocal = a.node === this.cfg.name;
    if (!state) {
      if (a.incarnation === 0 && !isLocal) return;
      const tomb = isLocal ? undefined : this.tombstone(a.node);
      if (tomb) {
        if (a.incarnation <= tomb.incarnation) {
          this.stats.staleAlive();
          this.log.debug(
            { node: a.node, incarnation: a.incarnation, buried: tomb.incarnation },
            'gossip: ignoring a stale alive for a member that died or left',
          );
          return;
        }
        this.tombstones.delete(a.node); // it refuted its death: a live member again
      }
      if (this.nodeMap.size >= this.cfg.maxNodes) {
        this.stats.drop('too_large');
        this.log.warn({ node: a.node }, 'gossip: member limit reached, ignoring new member');
        return;
      }
      state = {
        name: a.node,
        addr: Buffer.from(a.addr),
        port: a.port,
        meta: a.meta,
        incarnation: 0,
        state: NodeStateType.dead,
        stateChange: this.clock.now(),
        gen: 0,
        vsn: a.vsn.length >= 6 ? [...a.vsn.subarray(0, 6)] : [0, 0, 0, 0, 0, 0],
      };
      this.nodeMap.set(a.node, state);
      // Insert at a random position so the probe order stays fair.
      const n = this.nodes.length;
      const offset = randomInt(this.random, n);
      this.nodes.push(state);
      [this.nodes[offset], this.nodes[n]] = [this.nodes[n], this.nodes[offset]];
    } else if (!state.addr.equals(a.addr) || state.port !== a.port) {
      const canReclaim =
        this.cfg.deadNodeReclaimMs > 0 && this.clock.now() - state.stateChange > this.cfg.deadNodeReclaimMs;
      if (state.state === NodeStateType.left || (state.state === NodeStateType.dead && canReclaim)) {
        updatesNode = true;
      } else {
        this.log.warn(
          {
            node: a.node,
            mine: `${bytesToIp(state.addr)}:${state.port}`,
            theirs: `${bytesToIp(a.addr)}:${a.port}`,
          },
          'gossip: conflicting address for member',
        );
        return;
      }
    }
    if (a.incarnation <= state.incarnation && !isLocal && !updatesNode) return;
    if (a.incarnation < state.incarnation && isLocal) return;
    this.clearSuspicion(a.node);
    const oldState = state.state;
    const oldMeta = state.meta;
    if (!bootstrap && isLocal) {
      if (
        a.incarnation === state.incarnation &&
        bufEqual(a.meta, state.meta) &&
        bufEqual(a.vsn, Buffer.from(state.vsn))
      )
        return;
      this.refute(state, a.incarnation);
      this.log.warn({ node: a.node }, 'gossip: refuting an alive message about ourselves');
    } else {
      this.queueBroadcast(a.node, encodeAlive(a), notify ?? undefined);
      if (a.vsn.length >= 6) state.vsn = [...a.vsn.subarray(0, 6)];
      state.incarnation = a.incarnation;
      state.meta = a.meta ? Buffer.from(a.meta) : null;
      state.addr = Buffer.from(a.addr);
      state.port = a.port;
      if (state.state !== NodeStateType.alive) {
        state.state = NodeStateType.alive;
        state.stateChange = this.clock.now();
        state.gen++;
      }
    }
    if (oldState === NodeStateType.dead || oldState === NodeStateType.left) {
      this.delegate.notifyJoin?.(this.view(state));
    } else if (!bufEqual(oldMeta, state.meta)) {
      this.delegate.notifyUpdate?.(this.view(state));
    }
  }

  private suspectNode(s: Suspect): void {
    const state = this.nodeMap.get(s.node);
    if (!state) return;
    if (s.incarnation < state.incarnation) return;
    const timer = this.nodeTimers.get(s.node);
    if (timer) {
      if (timer.confirm(s.from)) this.queueBroadcast(s.node, encodeSuspect(s));
      return;
    }
    if (state.state !== NodeStateType.alive) return;
    if (state.name === this.cfg.name) {
      this.refute(state, s.incarnation);
      this.log.warn({ from: s.from }, 'gossip: refuting a suspect message');
      return;
    }
    this.queueBroadcast(s.node, encodeSuspect(s));
    state.incarnation = s.incarnation;
    state.state = NodeStateType.suspect;
    state.stateChange = this.clock.now();
    const gen = ++state.gen;
    // Expect k confirmations, none when there are too few members to give them.
    const n = this.nodes.length;
    let k = this.cfg.suspicionMult - 2;
    if (n - 2 < k) k = 0;
    const min = suspicionTimeout(this.cfg.suspicionMult, n, this.cfg.probeIntervalMs);
    const max = this.cfg.suspicionMaxTimeoutMult * min;
    this.nodeTimers.set(
      s.node,
      new Suspicion(s.from, k, min, max, this.clock, (confirmations) => {
        if (this.stopped) return;
        const st = this.nodeMap.get(s.node);
        if (!st || st.state !== NodeStateType.suspect || st.gen !== gen) return;
        this.log.info(
          { node: st.name, confirmations },
          'gossip: marking member as failed, suspect timeout reached',
        );
        this.deadNode({ incarnation: st.incarnation, node: st.name, from: this.cfg.name });
      }),
    );
  }

  private deadNode(d: Dead): void {
    const state = this.nodeMap.get(d.node);
    if (!state) return;
    if (d.incarnation < state.incarnation) return;
    this.clearSuspicion(d.node);
    if (this.deadOrLeft(state)) return;
    if (state.name === this.cfg.name) {
      if (!this.leaving) {
        this.refute(state, d.incarnation);
        this.log.warn({ from: d.from }, 'gossip: refuting a dead message');
        return;
      }
      const notify = this.leaveNotify;
      this.queueBroadcast(d.node, encodeDead(d), notify ?? undefined);
    } else {
      this.queueBroadcast(d.node, encodeDead(d));
    }
    state.incarnation = d.incarnation;
    state.state = d.node === d.from ? NodeStateType.left : NodeStateType.dead;
    state.stateChange = this.clock.now();
    state.gen++;
    this.delegate.notifyLeave?.(this.view(state));
  }

  // ---- join and leave ----

  /** Resolves `[name/]host[:port]` seeds (DNS names to all their addresses). */
  async resolveSeed(seed: string): Promise<HostPort[]> {
    const { host, port } = parseSeed(seed, this.cfg.bindPort);
    if (isIP(host)) return [{ host, port }];
    const addrs = await this.lookup(host);
    return addrs.map((a) => ({ host: a, port }));
  }

  /** Push/pull joins with every address of every seed; resolves with the number that answered. */
  async join(seeds: readonly string[]): Promise<{ joined: number; errors: string[] }> {
    let joined = 0;
    const errors: string[] = [];
    for (const seed of seeds) {
      let addrs: HostPort[];
      try {
        addrs = await this.resolveSeed(seed);
      } catch (err) {
        errors.push(`resolving ${seed}: ${(err as Error).message}`);
        continue;
      }
      for (const a of addrs) {
        if (this.stopped) break;
        try {
          await this.pushPullNode(a, true);
          joined++;
        } catch (err) {
          errors.push(`joining ${hostPortString(a)}: ${(err as Error).message}`);
        }
      }
    }
    return { joined, errors };
  }

  private anyAlive(): boolean {
    return this.nodes.some((n) => !this.deadOrLeft(n) && n.name !== this.cfg.name);
  }

  /** Broadcasts our leave (a `dead` from ourselves) and waits until it has been gossiped. */
  async leave(timeoutMs: number): Promise<void> {
    if (this.stopped || this.leaving) return;
    this.leaving = true;
    const me = this.nodeMap.get(this.cfg.name);
    if (!me) return;
    let done: () => void = () => {};
    const finished = new Promise<void>((r) => {
      done = r;
    });
    this.leaveNotify = () => done();
    this.deadNode({ incarnation: me.incarnation, node: me.name, from: me.name });
    if (!this.anyAlive()) return;
    let timer: TimerHandle | null = null;
    const timedOut = new Promise<boolean>((r) => {
      timer = this.after(timeoutMs, () => r(true));
    });
    const ok = await Promise.race([finished.then(() => false), timedOut]);
    this.cancel(timer);
    if (ok) throw new GossipError('timeout waiting for leave broadcast');
  }
}
