// Cluster benchmark (issue 4), DESIGN.md §8 targets: 10 nodes converge within 5 s; a killed node is
// marked dead within 10 s. Nodes run in this process on real UDP/TCP sockets on 127.0.0.1 with the
// shipped defaults (memberlist's LAN timings). Measured:
// - convergence: from starting N−1 nodes at once (all seeded with a first node) until every node
//   sees all N members alive with their type and API address;
// - failure detection: from a node's hard stop (sockets closed, no leave: what kill -9 looks like
//   to its peers) until every other node has marked it dead, a few times, and the worst case;
// - leave propagation: from a graceful leave (then stop, as a node shutting down does) until no other
//   node holds it live, and how many recorded it as left rather than dead.
// The reference for each figure is the protocol's own bound at the same settings, printed beside it.
// Run alone: `npx tsx bench/cluster.ts`; from `npm run bench`, `run()` returns the markdown section.
import pino from 'pino';
import { Registry } from 'prom-client';
import { type Cluster, GOSSIP_DEFAULTS, startCluster } from '../node/cluster/index.ts';
import { suspicionTimeout } from '../node/cluster/suspicion.ts';
import { runIfMain } from './lib.ts';

const SIZES = (process.env.BENCH_CLUSTER_SIZES ?? '10,30').split(',').map(Number);
const KILLS = Number(process.env.BENCH_CLUSTER_KILLS ?? 3);
const logger = pino({ level: 'silent' });
const log = (s: string) => process.stderr.write(`cluster bench: ${s}\n`);

async function start(seeds: string[], i: number): Promise<Cluster> {
  return startCluster({
    bind: 'tcp://127.0.0.1:0',
    seeds,
    type: i % 2 ? 'store' : 'ingest',
    apiPort: 7650 + i,
    logger,
    registry: new Registry(),
    joinWaitMs: 0,
  });
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now() - t0;
}

interface Result {
  n: number;
  convergeMs: number;
  deadMs: number[];
  leaveMs: number;
  /** How many of the others recorded the leaver as left (not dead). */
  leftAt: string;
}

async function measure(n: number): Promise<Result> {
  const nodes: Cluster[] = [];
  try {
    nodes.push(await start([], 0));
    const seed = `127.0.0.1:${nodes[0].advertise.port}`;
    const t0 = performance.now();
    nodes.push(...(await Promise.all(Array.from({ length: n - 1 }, (_, i) => start([seed], i + 1)))));
    await until(
      () => nodes.every((c) => c.livePeers().length === n && c.livePeers().every((p) => p.state === 'alive')),
      60_000,
      `${n} nodes to converge`,
    );
    const convergeMs = performance.now() - t0;
    log(`${n} nodes converged in ${convergeMs.toFixed(0)} ms`);

    const deadMs: number[] = [];
    for (let k = 0; k < Math.min(KILLS, n - 2); k++) {
      const victim = nodes[nodes.length - 1 - k];
      const others = nodes.slice(0, nodes.length - 1 - k);
      const t1 = performance.now();
      await victim.stop();
      await until(
        () => others.every((c) => c.memberlist.member(victim.name)?.state === 'dead'),
        60_000,
        'failure detection',
      );
      deadMs.push(performance.now() - t1);
      log(`${n} nodes: killed node marked dead everywhere after ${deadMs[deadMs.length - 1].toFixed(0)} ms`);
    }
    const remaining = nodes.slice(0, nodes.length - Math.min(KILLS, n - 2));
    const leaver = remaining[remaining.length - 1];
    const stay = remaining.slice(0, -1);
    const t2 = performance.now();
    // As a node shuts down: leave (waits up to 1 s for the broadcast to go out), then stop.
    await leaver.leave(1000);
    await leaver.stop();
    const gone = () =>
      stay.every((c) => ['left', 'dead'].includes(c.memberlist.member(leaver.name)?.state ?? ''));
    await until(gone, 30_000, 'leave');
    const leaveMs = performance.now() - t2;
    const leftAt = stay.filter((c) => c.memberlist.member(leaver.name)?.state === 'left').length;
    return { n, convergeMs, deadMs, leaveMs, leftAt: `${leftAt}/${stay.length}` };
  } finally {
    await Promise.all(nodes.map((c) => c.stop()));
  }
}

const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

export async function run(): Promise<string> {
  const results: Result[] = [];
  for (const n of SIZES) results.push(await measure(n));
  const rows = results.map((r) => {
    const worst = Math.max(...r.deadMs);
    const min = suspicionTimeout(GOSSIP_DEFAULTS.suspicionMult, r.n, GOSSIP_DEFAULTS.probeIntervalMs);
    return `| ${r.n} | ${s(r.convergeMs)} | ${r.deadMs.map(s).join(', ')} (worst ${s(worst)}) | ${s(min)} – ${s(min * GOSSIP_DEFAULTS.suspicionMaxTimeoutMult)} | ${s(r.leaveMs)} (left at ${r.leftAt}) |`;
  });
  const ten = results.find((r) => r.n === 10);
  const verdict = ten
    ? `10 nodes: converged in ${s(ten.convergeMs)} (target ≤ 5 s: ${ten.convergeMs <= 5000 ? 'met' : 'MISSED'}); killed node dead everywhere in at most ${s(Math.max(...ten.deadMs))} (target ≤ 10 s: ${Math.max(...ten.deadMs) <= 10_000 ? 'met' : 'MISSED'}).`
    : '';
  return `## Cluster (gossip)

Nodes in one process on real sockets (127.0.0.1), shipped defaults: probe ${GOSSIP_DEFAULTS.probeIntervalMs} ms / timeout ${GOSSIP_DEFAULTS.probeTimeoutMs} ms, gossip ${GOSSIP_DEFAULTS.gossipIntervalMs} ms to ${GOSSIP_DEFAULTS.gossipNodes}, suspicion ×${GOSSIP_DEFAULTS.suspicionMult} (max ×${GOSSIP_DEFAULTS.suspicionMaxTimeoutMult}), push/pull ${GOSSIP_DEFAULTS.pushPullIntervalMs / 1000} s. Convergence: N−1 nodes started at once against one seed, until every node sees N alive members with type and API address. Failure: a node's sockets closed without a leave (kill -9 as its peers see it), until every other node marks it dead. The suspicion window is the protocol's own bound once a member is suspected (confirmations shorten it towards the minimum).

| nodes | converge | killed → dead everywhere | suspicion window | leave + stop → gone everywhere |
| --- | --- | --- | --- | --- |
${rows.join('\n')}

${verdict}
`;
}

runIfMain(import.meta.url, run);
