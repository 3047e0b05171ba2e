// Shared plumbing of the cluster tests: clusters on the simulated network, metric reads, hand-made
// push/pull exchanges.
import assert from 'node:assert/strict';
import pino from 'pino';
import { Registry } from 'prom-client';
import { type Cluster, type GossipTuning, startCluster } from '../../node/cluster/cluster.ts';
import type { Keyring } from '../../node/cluster/crypto.ts';
import type { Lookup } from '../../node/cluster/memberlist.ts';
import { MsgWriter } from '../../node/cluster/msgpack.ts';
import type { PeerType } from '../../node/cluster/peers.ts';
import { BufferSource, frameStream, openStream } from '../../node/cluster/stream.ts';
import {
  asStruct,
  decodePushNodeState,
  decodePushPullHeader,
  MsgType,
  type PushNodeState,
  writePushNodeState,
  writePushPullHeader,
} from '../../node/cluster/wire.ts';
import { SimClock, SimNetwork, type SimTransport, seededRandom } from './sim.ts';

export const silent = pino({ level: 'silent' });

/** Timings for real-socket tests: probes every 200 ms, failures declared in about a second. */
export const FAST: GossipTuning = {
  probeIntervalMs: 200,
  probeTimeoutMs: 100,
  gossipIntervalMs: 50,
  pushPullIntervalMs: 2000,
  suspicionMult: 2,
  gossipToTheDeadMs: 5000,
  tcpTimeoutMs: 2000,
};

export async function metricValue(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (!m) return 0;
  const { values } = await m.get();
  let sum = 0;
  for (const v of values) {
    if (Object.entries(labels).every(([k, x]) => String(v.labels[k]) === x)) sum += v.value;
  }
  return sum;
}

export interface SimNode {
  cluster: Cluster;
  registry: Registry;
  host: string;
  name: string;
}

export class SimWorld {
  readonly clock = new SimClock();
  readonly net: SimNetwork;
  readonly nodes: SimNode[] = [];
  lookup: Lookup = async (host) => {
    throw new Error(`no such host ${host}`);
  };

  constructor(seed = 42) {
    this.net = new SimNetwork(this.clock, seededRandom(seed));
  }

  async start(
    host: string,
    o: {
      seeds?: string[];
      type?: PeerType;
      gossip?: GossipTuning;
      name?: string;
      keyring?: Keyring;
      label?: string;
      apiPort?: number;
    } = {},
  ): Promise<SimNode> {
    const registry = new Registry();
    const name = o.name ?? `node-${host}`;
    const cluster = await startCluster({
      bind: `tcp://${host}:7946`,
      seeds: o.seeds ?? [],
      type: o.type ?? 'ingeststore',
      apiPort: o.apiPort ?? 7650,
      logger: silent,
      registry,
      name,
      keyring: o.keyring,
      label: o.label,
      gossip: o.gossip,
      transport: this.net.transport(host, 7946),
      clock: this.clock,
      random: seededRandom(this.nodes.length + 7),
      lookup: (h) => this.lookup(h),
      joinWaitMs: 0,
    });
    const node = { cluster, registry, host, name };
    this.nodes.push(node);
    return node;
  }

  /** Starts `n` nodes 10.0.0.1…n, all seeded with the first. */
  async startMany(n: number, o: { gossip?: GossipTuning } = {}): Promise<SimNode[]> {
    const out: SimNode[] = [];
    for (let i = 1; i <= n; i++) {
      out.push(await this.start(`10.0.0.${i}`, { seeds: i === 1 ? [] : ['10.0.0.1'], gossip: o.gossip }));
    }
    return out;
  }

  /** Advances until every listed node sees exactly `n` live peers with known types. */
  async converge(nodes: SimNode[], n: number, maxMs = 20_000): Promise<number> {
    return this.clock.until(
      () => nodes.every((x) => x.cluster.livePeers().length === n && x.cluster.size() === n),
      maxMs,
      50,
      `convergence to ${n} members`,
    );
  }

  stateOf(observer: SimNode, target: SimNode): string | undefined {
    return observer.cluster.memberlist.member(target.name)?.state;
  }

  async stopAll(): Promise<void> {
    for (const n of this.nodes) await n.cluster.stop();
  }
}

export function pushPullFrame(nodes: PushNodeState[], user: Buffer, join = false): Buffer {
  const w = new MsgWriter();
  w.byte(MsgType.pushPull);
  writePushPullHeader(w, { nodes: nodes.length, userStateLen: user.length, join });
  for (const n of nodes) writePushNodeState(w, n);
  w.bytes(user);
  return frameStream(w.finish(), { compress: true, keyring: null, label: '' });
}

/** A push/pull from `from` (a bare simulated endpoint) to `host`; resolves with the nodes of the reply. */
export async function pushPullTo(
  w: SimWorld,
  from: SimTransport,
  host: string,
  nodes: PushNodeState[],
  user: Buffer,
): Promise<PushNodeState[]> {
  const dialing = from.dial({ host, port: 7946 }, 1000);
  await w.clock.advance(5);
  const conn = await dialing;
  const chunks: Buffer[] = [];
  conn.onData((b) => chunks.push(b));
  conn.write(pushPullFrame(nodes, user));
  await w.clock.advance(50);
  const { type, source } = await openStream(new BufferSource(Buffer.concat(chunks)), {
    keyring: null,
    label: '',
  });
  assert.equal(type, MsgType.pushPull);
  const h = decodePushPullHeader(asStruct(await source.readValue(), 'header'));
  const out: PushNodeState[] = [];
  for (let i = 0; i < h.nodes; i++) out.push(decodePushNodeState(asStruct(await source.readValue(), 'node')));
  return out;
}
