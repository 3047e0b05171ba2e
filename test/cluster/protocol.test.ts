// The gossip protocol on simulated time and an in-memory network: join, failure detection,
// refutation, leave, suspicion confirmations, indirect and TCP probes, push/pull merge, the
// peer-map fixes (no resurrection by stale push/pull) and seed retries.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { Awareness } from '../../node/cluster/awareness.ts';
import { ipToBytes } from '../../node/cluster/ip.ts';
import {
  GOSSIP_DEFAULTS,
  LAN_DEFAULTS,
  Memberlist,
  type MemberlistConfig,
} from '../../node/cluster/memberlist.ts';
import { MsgWriter } from '../../node/cluster/msgpack.ts';
import { encodePacket } from '../../node/cluster/packet.ts';
import { retransmitLimit, TransmitLimitedQueue } from '../../node/cluster/queue.ts';
import { remainingSuspicionTime, Suspicion, suspicionTimeout } from '../../node/cluster/suspicion.ts';
import {
  encodeAlive,
  encodeDead,
  encodeSuspect,
  MsgType,
  type PushNodeState,
  writePushPullHeader,
} from '../../node/cluster/wire.ts';
import { metricValue, pushPullFrame, pushPullTo, SimWorld, silent } from './helpers.ts';
import { SimClock, type SimTransport, seededRandom } from './sim.ts';

let world: SimWorld;
afterEach(async () => {
  await world?.stopAll();
});

const plain = { compress: true, crc: false, keyring: null, label: '' };

describe('gossip protocol (simulated network)', () => {
  it('joins through a seed and converges on members and peer info', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(5);
    const took = await world.converge(nodes, 5, 10_000);
    assert.ok(took < 3000, `converged after ${took} simulated ms`);
    for (const n of nodes) {
      assert.equal(n.cluster.current('store').length, 5);
      const peers = n.cluster.livePeers();
      assert.deepEqual(
        peers.map((p) => p.state),
        Array(5).fill('alive'),
      );
      assert.ok(peers.every((p) => p.apiAddr.endsWith(':7650') && p.gossipAddr.endsWith(':7946')));
    }
    assert.equal(await metricValue(nodes[0].registry, 'oklog_cluster_size'), 5);
  });

  it('detects a failure: suspect first, then dead, and stops routing to it', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(5);
    await world.converge(nodes, 5);
    const [a, , , , e] = nodes;
    await e.cluster.stop(); // kill -9: no leave
    const sawSuspect = await world.clock.until(
      () => nodes.slice(0, 4).some((n) => world.stateOf(n, e) === 'suspect'),
      10_000,
      10,
      'a suspect',
    );
    const dead = await world.clock.until(
      () => nodes.slice(0, 4).every((n) => world.stateOf(n, e) === 'dead'),
      30_000,
      50,
      'dead everywhere',
    );
    assert.ok(sawSuspect + dead < 10_000, `suspect after ${sawSuspect} ms, dead ${dead} ms later`);
    assert.equal(a.cluster.size(), 4);
    assert.ok(!a.cluster.current('store').some((addr) => addr.startsWith(`${e.host}:`)));
    assert.equal(a.cluster.members().find((m) => m.name === e.name)?.state, 'dead');
    assert.ok((await metricValue(a.registry, 'oklog_cluster_probes_total', { result: 'failed' })) >= 0);
  });

  it('refutes a suspicion or death about itself with a higher incarnation', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(3);
    await world.converge(nodes, 3);
    const [a, b] = nodes;
    const inc = b.cluster.memberlist.localMember().incarnation;
    const liar = world.net.transport('10.0.0.99');
    liar.sendPacket(encodePacket(encodeSuspect({ incarnation: inc, node: b.name, from: 'liar' }), plain), {
      host: b.host,
      port: 7946,
    });
    await world.clock.advance(5);
    const after = b.cluster.memberlist.localMember().incarnation;
    assert.ok(after > inc, `incarnation ${inc} → ${after}`);
    assert.equal(b.cluster.memberlist.healthScore, 1, 'refuting lowers local health');
    await world.clock.until(() => (a.cluster.memberlist.member(b.name)?.incarnation ?? 0) >= after, 5000);
    assert.equal(world.stateOf(a, b), 'alive');

    liar.sendPacket(encodePacket(encodeDead({ incarnation: after + 5, node: b.name, from: 'liar' }), plain), {
      host: b.host,
      port: 7946,
    });
    await world.clock.advance(5);
    assert.ok(b.cluster.memberlist.localMember().incarnation > after + 5);
    await world.clock.advance(3000);
    assert.equal(world.stateOf(a, b), 'alive');
    assert.equal(b.cluster.memberlist.localMember().state, 'alive');
  });

  it('a short partition makes a member suspect, and it refutes instead of dying', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(4);
    await world.converge(nodes, 4);
    const hosts = nodes.map((n) => n.host);
    const d = nodes[3];
    world.net.isolate(d.host, hosts);
    await world.clock.until(
      () => nodes.slice(0, 3).some((n) => world.stateOf(n, d) === 'suspect'),
      10_000,
      10,
    );
    world.net.heal();
    await world.clock.until(() => nodes.slice(0, 3).every((n) => world.stateOf(n, d) === 'alive'), 10_000);
    assert.ok(d.cluster.memberlist.localMember().incarnation > 1);
  });

  it('a leave is recorded as left, not dead, and the entry is dropped', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(3);
    await world.converge(nodes, 3);
    const [a, b, c] = nodes;
    const leaving = c.cluster.leave(1000);
    await world.clock.advance(1200);
    await leaving;
    await world.clock.until(() => world.stateOf(a, c) === 'left' && world.stateOf(b, c) === 'left', 2000);
    assert.equal(a.cluster.size(), 2);
    assert.ok(!a.cluster.livePeers().some((p) => p.name === c.name));
    assert.equal(a.cluster.members().find((m) => m.name === c.name)?.state, 'left');
    assert.equal(Object.keys(a.cluster.clusterState().delegate).length, 2);
    // A left member is never probed, and is not declared dead later.
    await world.clock.advance(20_000);
    assert.equal(world.stateOf(a, c), 'left');
  });

  it('independent confirmations shorten the suspicion timeout', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(7);
    await world.converge(nodes, 7);
    const g = nodes[6];
    world.net.isolate(
      g.host,
      nodes.map((n) => n.host),
    );
    const a = nodes[0];
    const suspectAt = await world.clock.until(() => world.stateOf(a, g) === 'suspect', 20_000, 10);
    const deadAfter = await world.clock.until(() => world.stateOf(a, g) === 'dead', 60_000, 10);
    const min = suspicionTimeout(GOSSIP_DEFAULTS.suspicionMult, 7, GOSSIP_DEFAULTS.probeIntervalMs);
    const max = GOSSIP_DEFAULTS.suspicionMaxTimeoutMult * min;
    assert.ok(deadAfter >= min - 100, `dead ${deadAfter} ms after suspect, min ${min}`);
    assert.ok(deadAfter < max / 2, `dead ${deadAfter} ms after suspect, max ${max}: confirmations counted`);
    assert.ok(suspectAt < 10_000);
  });

  it('survives a broken direct path through indirect probes', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(3);
    await world.converge(nodes, 3);
    const [a, b, c] = nodes;
    world.net.block(a.host, c.host);
    await world.clock.advance(20_000);
    assert.equal(world.stateOf(a, c), 'alive');
    assert.equal(world.stateOf(c, a), 'alive');
    assert.equal(world.stateOf(b, c), 'alive');
    assert.ok((await metricValue(a.registry, 'oklog_cluster_probes_total', { result: 'indirect' })) > 0);
  });

  it('falls back to a TCP ping when UDP is lost', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(2);
    await world.converge(nodes, 2);
    const [a, b] = nodes;
    world.net.block(a.host, b.host, 'udp');
    await world.clock.advance(15_000);
    assert.equal(world.stateOf(a, b), 'alive');
    assert.ok((await metricValue(a.registry, 'oklog_cluster_probes_total', { result: 'tcp' })) > 0);
    assert.equal(await metricValue(a.registry, 'oklog_cluster_probes_total', { result: 'failed' }), 0);
  });

  it('merges two clusters by push/pull, state and peer map at once', async () => {
    world = new SimWorld();
    const a = await world.start('10.0.0.1', { type: 'ingest' });
    const b = await world.start('10.0.0.2', { seeds: ['10.0.0.1'], type: 'ingest' });
    const c = await world.start('10.0.0.3', { type: 'store' });
    const d = await world.start('10.0.0.4', { seeds: ['10.0.0.3'], type: 'store' });
    await world.converge([a, b], 2);
    await world.converge([c, d], 2);
    assert.deepEqual(a.cluster.current('store'), []);
    const joining = a.cluster.memberlist.join(['10.0.0.3:7946']);
    await world.clock.advance(10);
    assert.deepEqual(await joining, { joined: 1, errors: [] });
    // Right after the exchange: A knows C and D, and C knows A and B, with their types.
    assert.equal(a.cluster.size(), 4);
    assert.equal(c.cluster.size(), 4);
    assert.equal(a.cluster.current('store').length, 2);
    assert.equal(c.cluster.current('ingest').length, 2);
    await world.converge([a, b, c, d], 4, 5000);
  });

  it('learns the peer entry of a member without metadata (a Go OK Log node) from push/pull state', async () => {
    world = new SimWorld();
    const a = await world.start('10.0.0.1', { type: 'store' });
    const goState = Buffer.from(
      JSON.stringify({ 'go-node': { type: 'ingest', api_addr: '10.0.0.9', api_port: 7650 } }),
    );
    const cfg: MemberlistConfig = {
      ...LAN_DEFAULTS,
      name: 'go-node',
      advertiseAddr: '10.0.0.9',
      advertisePort: 7946,
      bindPort: 7946,
    };
    const go = new Memberlist(cfg, {
      transport: world.net.transport('10.0.0.9'),
      clock: world.clock,
      random: seededRandom(9),
      logger: silent,
      delegate: { localState: () => goState, mergeRemoteState: () => {} },
    });
    go.start();
    const joining = go.join(['10.0.0.1']);
    await world.clock.advance(20);
    assert.equal((await joining).joined, 1);
    assert.deepEqual(a.cluster.current('ingest'), ['10.0.0.9:7650']);
    assert.equal(a.cluster.livePeers().find((p) => p.name === 'go-node')?.type, 'ingest');
    await go.shutdown();
  });

  it('queues peer-info fetches: nine Go nodes announced at once are all known in seconds, four fetches at a time', async () => {
    world = new SimWorld();
    // No periodic push/pull on our node: only the fetches can bring the Go nodes' entries.
    const a = await world.start('10.0.0.1', { type: 'store', gossip: { pushPullIntervalMs: 600_000 } });
    const ours = world.net.endpoints.get('10.0.0.1:7946') as SimTransport;
    const dial = ours.dial.bind(ours);
    let open = 0;
    let maxOpen = 0;
    let dials = 0;
    ours.dial = async (to, timeoutMs) => {
      const conn = await dial(to, timeoutMs);
      dials++;
      open++;
      maxOpen = Math.max(maxOpen, open);
      conn.onClose(() => open--);
      return conn;
    };
    const gos: Memberlist[] = [];
    const goNode = (i: number) => {
      const name = `go-${i}`;
      const host = `10.0.1.${i + 1}`;
      const state = Buffer.from(
        JSON.stringify({ [name]: { type: 'ingest', api_addr: host, api_port: 7650 } }),
      );
      const ml = new Memberlist(
        {
          ...LAN_DEFAULTS,
          name,
          advertiseAddr: host,
          advertisePort: 7946,
          bindPort: 7946,
          pushPullIntervalMs: 0,
        },
        {
          transport: world.net.transport(host),
          clock: world.clock,
          random: seededRandom(100 + i),
          logger: silent,
          delegate: { localState: () => state, mergeRemoteState: () => {} },
        },
      );
      ml.start();
      gos.push(ml);
      return ml;
    };
    try {
      const g0 = goNode(0);
      const j0 = g0.join(['10.0.0.1']);
      await world.clock.advance(20);
      assert.equal((await j0).joined, 1);
      await world.clock.until(() => a.cluster.current('ingest').length === 1, 2000);
      // Eight more join through the first Go node, all at once: we hear of them in one gossip burst.
      const joins = Array.from({ length: 8 }, (_, i) => goNode(i + 1).join(['10.0.1.1']));
      await world.clock.advance(20);
      for (const j of joins) assert.equal((await j).joined, 1);
      const took = await world.clock.until(
        () => a.cluster.current('ingest').length === 9,
        5000,
        10,
        'every Go node known',
      );
      assert.ok(took < 3000, `all known after ${took} ms`);
      assert.ok(maxOpen <= 4, `${maxOpen} fetches at once`);
      assert.ok(dials >= 8, `${dials} fetches`);
    } finally {
      for (const g of gos) await g.shutdown();
    }
  });

  it('never resurrects a dead member from a stale push/pull, before or after it is reaped', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(3);
    await world.converge(nodes, 3);
    const [a, , c] = nodes;
    const cInc = c.cluster.memberlist.localMember().incarnation;
    await c.cluster.stop();
    await world.clock.until(() => world.stateOf(a, c) === 'dead', 30_000);
    assert.equal(a.cluster.current('store').length, 2);

    // A peer that has not noticed: C alive at its old incarnation, and its entry in the user state.
    const stale = Buffer.from(
      JSON.stringify({
        [c.name]: { type: 'store', api_addr: c.host, api_port: 7650 },
        ghost: { type: 'store', api_addr: '10.9.9.9', api_port: 7650 },
      }),
    );
    const cAlive = (incarnation: number): PushNodeState => ({
      name: c.name,
      addr: ipToBytes(c.host)!,
      port: 7946,
      meta: null,
      incarnation,
      state: 0,
      vsn: Buffer.from([1, 5, 2, 0, 0, 0]),
    });
    const fake = world.net.transport('10.0.0.99');
    await pushPullTo(world, fake, a.host, [cAlive(cInc)], stale);
    assert.equal(world.stateOf(a, c), 'dead');
    assert.equal(a.cluster.current('store').length, 2, 'no stale store peer');
    assert.ok(!('ghost' in a.cluster.clusterState().delegate));
    assert.ok(!(c.name in a.cluster.clusterState().delegate));
    assert.ok((await metricValue(a.registry, 'oklog_cluster_stale_peer_entries_total')) >= 2);
    // Ordinary anti-entropy later does not bring it back either.
    await world.clock.advance(40_000);
    assert.equal(a.cluster.current('store').length, 2);

    // Past GossipToTheDeadTime memberlist has reaped C. Its tombstone still rejects the same stale
    // state (memberlist alone would take it for a new member and route to it until it died again),
    // and the reply tells the stale peer that C is dead.
    assert.equal(a.cluster.memberlist.member(c.name), null, 'C reaped from the member list');
    assert.ok(a.cluster.memberlist.isTombstoned(c.name));
    const reply = await pushPullTo(world, fake, a.host, [cAlive(cInc)], stale);
    const told = reply.find((n) => n.name === c.name);
    assert.deepEqual(told && [told.state, told.incarnation], [2, cInc], 'the reply carries C as dead');
    assert.equal(a.cluster.memberlist.member(c.name), null, 'not resurrected by push/pull');
    // A stale alive by UDP is ignored the same way.
    fake.sendPacket(
      encodePacket(
        encodeAlive({ ...cAlive(cInc), node: c.name, meta: null, vsn: Buffer.from([1, 5, 2, 0, 0, 0]) }),
        plain,
      ),
      { host: a.host, port: 7946 },
    );
    const routedAgain = await world.clock
      .until(
        () => a.cluster.current('store').length !== 2 || a.cluster.memberlist.member(c.name) !== null,
        10_000,
        50,
      )
      .then(
        () => true,
        () => false,
      );
    assert.equal(routedAgain, false, 'C never came back in 10 s after the stale state');
    assert.ok(!(c.name in a.cluster.clusterState().delegate));
    assert.ok((await metricValue(a.registry, 'oklog_cluster_stale_alives_total')) >= 2);

    // A higher incarnation is a refutation (a live member wrongly declared dead): accepted.
    await pushPullTo(world, fake, a.host, [cAlive(cInc + 1)], stale);
    assert.equal(world.stateOf(a, c), 'alive');
    assert.ok(!a.cluster.memberlist.isTombstoned(c.name));
    assert.equal(a.cluster.current('store').length, 3);
    // C is really gone, so it dies again.
    await world.clock.until(() => world.stateOf(a, c) === 'dead', 30_000);
    assert.equal(a.cluster.current('store').length, 2);
  });

  it('inbound streams share one memory budget: over it a stream is closed and counted, and the budget comes back', async () => {
    world = new SimWorld();
    const MiB = 1024 * 1024;
    const a = await world.start('10.0.0.1', { gossip: { maxInboundStreamBytes: MiB } });
    const fake = world.net.transport('10.0.0.99');
    const open = async () => {
      const dialing = fake.dial({ host: a.host, port: 7946 }, 1000);
      await world.clock.advance(5);
      const conn = await dialing;
      const got: Buffer[] = [];
      let closed = false;
      conn.onData((b) => got.push(b));
      conn.onClose(() => {
        closed = true;
      });
      return { conn, got, closed: () => closed };
    };
    /** A push/pull's user state: a JSON object of exactly `n` bytes. */
    const userState = (n: number) => Buffer.from(`{"x":"${'a'.repeat(n - 8)}"}`);
    const header = (userLen: number) => {
      const w = new MsgWriter();
      w.byte(MsgType.pushPull);
      writePushPullHeader(w, { nodes: 0, userStateLen: userLen, join: false });
      return Buffer.from(w.finish());
    };
    const budgetDrops = () =>
      metricValue(a.registry, 'oklog_cluster_dropped_packets_total', { reason: 'budget' });

    // Stream 1 holds 700 KiB of a 900 KiB state, uncompressed, and waits.
    const big = userState(900 * 1024);
    const s1 = await open();
    s1.conn.write(Buffer.concat([header(big.length), big.subarray(0, 700 * 1024)]));
    await world.clock.advance(5);
    assert.ok(a.cluster.memberlist.inboundStreamBytes >= 700 * 1024);
    assert.equal(s1.closed(), false);

    // Stream 2 would take the node past 1 MiB: closed at once, counted.
    const s2 = await open();
    s2.conn.write(Buffer.concat([header(big.length), big.subarray(0, 700 * 1024)]));
    await world.clock.advance(5);
    assert.equal(s2.closed(), true);
    assert.equal(await budgetDrops(), 1);

    // Stream 3 is small on the wire but decompresses to 600 KiB: more than the room left.
    const s3 = await open();
    s3.conn.write(pushPullFrame([], userState(600 * 1024)));
    await world.clock.advance(5);
    assert.equal(s3.closed(), true);
    assert.equal(await budgetDrops(), 2);

    // Stream 1 completes: its push/pull is answered, and everything it held is given back.
    s1.conn.write(big.subarray(700 * 1024));
    await world.clock.advance(20);
    assert.ok(s1.got.length > 0, 'stream 1 got its reply');
    assert.equal(a.cluster.memberlist.inboundStreamBytes, 0);

    // With the budget back, the 600 KiB state goes through.
    const okBefore = await metricValue(a.registry, 'oklog_cluster_push_pulls_total', {
      direction: 'in',
      result: 'ok',
    });
    const s4 = await open();
    s4.conn.write(pushPullFrame([], userState(600 * 1024)));
    await world.clock.advance(20);
    assert.ok(s4.got.length > 0, 'stream 4 got its reply');
    assert.equal(
      await metricValue(a.registry, 'oklog_cluster_push_pulls_total', { direction: 'in', result: 'ok' }),
      okBefore + 1,
    );
    assert.equal(await budgetDrops(), 2);
    assert.equal(a.cluster.memberlist.inboundStreamBytes, 0);
  });

  it('a lone node keeps retrying its seeds, re-resolving DNS, until it joins', async () => {
    world = new SimWorld();
    let lookups = 0;
    let seedUp = false;
    world.lookup = async (host) => {
      lookups++;
      if (host !== 'seed.oklog.test' || !seedUp) throw new Error('ENOTFOUND');
      return ['10.0.0.1'];
    };
    const b = await world.start('10.0.0.2', { seeds: ['seed.oklog.test'] });
    await world.clock.advance(15_000);
    assert.equal(b.cluster.size(), 1);
    assert.ok(lookups >= 4, `${lookups} lookups in 15 s`);
    const failed = await metricValue(b.registry, 'oklog_cluster_join_attempts_total', { result: 'error' });
    assert.ok(failed >= 4);
    const a = await world.start('10.0.0.1');
    seedUp = true;
    const took = await world.clock.until(() => b.cluster.size() === 2 && a.cluster.size() === 2, 10_000);
    assert.ok(took <= 6500, `joined ${took} ms after the seed appeared`);
    const n = lookups;
    await world.clock.advance(20_000);
    assert.ok(lookups - n <= 1, 'no more join attempts once joined');
  });

  it('rejoins after a long partition once the link heals', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(3);
    await world.converge(nodes, 3);
    const c = nodes[2];
    world.net.isolate(
      c.host,
      nodes.map((n) => n.host),
    );
    await world.clock.until(() => c.cluster.size() === 1 && nodes[0].cluster.size() === 2, 60_000, 100);
    await world.clock.advance(40_000); // long enough for the dead to be forgotten
    world.net.heal();
    const took = await world.converge(nodes, 3, 30_000);
    assert.ok(took < 20_000, `healed in ${took} ms`);
  });
});

describe('protocol building blocks', () => {
  it('transmit-limited queue: limit, replacement, order', () => {
    let n = 10;
    const q = new TransmitLimitedQueue(4, () => n);
    assert.equal(retransmitLimit(4, 10), 8);
    let finished = 0;
    q.queue({ name: 'a', msg: Buffer.alloc(100, 1), finished: () => finished++ });
    let sends = 0;
    for (let i = 0; i < 20; i++) sends += q.getBroadcasts(2, 1400).length;
    assert.equal(sends, 8);
    assert.equal(finished, 1);

    const old = { name: 'x', msg: Buffer.alloc(10), finished: () => finished++ };
    q.queue(old);
    q.queue({ name: 'x', msg: Buffer.alloc(11, 2) });
    assert.equal(finished, 2, 'a newer broadcast about the same node replaces the old one');
    assert.deepEqual(q.getBroadcasts(2, 1400), [Buffer.alloc(11, 2)]);

    q.reset();
    q.queue({ name: 'small', msg: Buffer.alloc(10, 3) });
    q.queue({ name: 'big', msg: Buffer.alloc(500, 4) });
    const first = q.getBroadcasts(2, 1400);
    assert.deepEqual(
      first.map((b) => b.length),
      [500, 10],
      'largest first within a transmit count',
    );
    q.queue({ name: 'fresh', msg: Buffer.alloc(20, 5) });
    assert.deepEqual(
      q.getBroadcasts(2, 30).map((b) => b.length),
      [20],
      'fewest transmits first, bounded by the space left',
    );
    n = 1;
    assert.equal(retransmitLimit(4, n), 4);
  });

  it('suspicion timeout: min/max, confirmations shrink it', async () => {
    assert.equal(suspicionTimeout(4, 10, 1000), 4000);
    assert.equal(suspicionTimeout(4, 1, 1000), 4000);
    assert.equal(suspicionTimeout(4, 100, 1000), 8000);
    assert.equal(remainingSuspicionTime(0, 3, 0, 2000, 30_000), 30_000);
    assert.equal(remainingSuspicionTime(3, 3, 0, 2000, 30_000), 2000);
    // frac = ln 2 / ln 4 = ½: 30 s − ½ × 28 s = 16 s, of which 2 s have passed.
    assert.equal(remainingSuspicionTime(1, 3, 2000, 2000, 30_000), 14_000);

    const clock = new SimClock();
    let fired = -1;
    const s = new Suspicion('a', 3, 2000, 30_000, clock, (n) => {
      fired = n;
    });
    assert.equal(s.confirm('a'), false, 'the accuser does not confirm itself');
    await clock.advance(1000);
    assert.equal(s.confirm('b'), true);
    assert.equal(s.confirm('b'), false);
    await clock.advance(14_900);
    assert.equal(fired, -1);
    await clock.advance(200);
    assert.equal(fired, 1, 'fires at max − frac × (max − min) = 16 s');

    let fired0 = false;
    new Suspicion('a', 0, 2000, 30_000, clock, () => {
      fired0 = true;
    });
    await clock.advance(2000);
    assert.ok(fired0, 'k = 0 fires at min');
  });

  it('awareness scales timeouts and stays within bounds', () => {
    const a = new Awareness(8);
    assert.equal(a.scaleTimeout(500), 500);
    a.applyDelta(3);
    assert.equal(a.scaleTimeout(500), 2000);
    a.applyDelta(100);
    assert.equal(a.healthScore, 7);
    a.applyDelta(-100);
    assert.equal(a.healthScore, 0);
  });
});
