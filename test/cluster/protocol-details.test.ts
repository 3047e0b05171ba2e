// Protocol details on simulated time and an in-memory network, each against memberlist's rule:
// push/pull slows down above 32 members, gossip goes to dead members for GossipToTheDeadTime and
// never to left ones, missing nacks (not silence alone) raise the local health score, protocol
// versions are negotiated (incompatible push/pulls rejected, alives with invalid versions
// ignored), and no outgoing packet with piggybacked broadcasts exceeds UDPBufferSize (plus the
// CRC header, which memberlist does not count either).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, it } from 'node:test';
import { decryptPayload, Keyring } from '../../node/cluster/crypto.ts';
import { ipToBytes } from '../../node/cluster/ip.ts';
import {
  LAN_DEFAULTS,
  Memberlist,
  type MemberlistStats,
  NO_STATS,
  pushPullScale,
} from '../../node/cluster/memberlist.ts';
import { encodePacket } from '../../node/cluster/packet.ts';
import { encodeAlive, MsgType, type PushNodeState, stripLabel } from '../../node/cluster/wire.ts';
import { metricValue, pushPullTo, SimWorld, silent } from './helpers.ts';
import { seededRandom } from './sim.ts';

let world: SimWorld;
const extra: Memberlist[] = [];
afterEach(async () => {
  for (const m of extra.splice(0)) await m.shutdown();
  await world?.stopAll();
});

const VSN = Buffer.from([1, 5, 2, 0, 0, 0]);
const plain = { compress: false, crc: false, keyring: null, label: '' };

/** A plain memberlist on the simulated network; passive ones answer but never probe or gossip. */
function member(
  host: string,
  o: { passive?: boolean; pushPullIntervalMs?: number; stats?: Partial<MemberlistStats> } = {},
): Memberlist {
  const stats: MemberlistStats = { ...NO_STATS, ...o.stats };
  const ml = new Memberlist(
    {
      ...LAN_DEFAULTS,
      name: `m-${host}`,
      advertiseAddr: host,
      advertisePort: 7946,
      bindPort: 7946,
      ...(o.passive ? { probeIntervalMs: 0, gossipIntervalMs: 0, pushPullIntervalMs: 0 } : {}),
      ...(o.pushPullIntervalMs !== undefined ? { pushPullIntervalMs: o.pushPullIntervalMs } : {}),
    },
    {
      transport: world.net.transport(host),
      clock: world.clock,
      random: seededRandom(extra.length + 11),
      logger: silent,
      stats,
    },
  );
  ml.start();
  extra.push(ml);
  return ml;
}

async function joinAll(members: Memberlist[], seed: string): Promise<void> {
  const joins = members.map((m) => m.join([seed]));
  await world.clock.advance(50);
  for (const j of joins) assert.equal((await j).joined, 1);
}

describe('push/pull interval', () => {
  it("scales as memberlist's pushPullScale: ×1 up to 32 members, then ceil(log2 n − 5) + 1", () => {
    assert.equal(pushPullScale(30_000, 1), 30_000);
    assert.equal(pushPullScale(30_000, 32), 30_000);
    assert.equal(pushPullScale(30_000, 33), 60_000);
    assert.equal(pushPullScale(30_000, 64), 60_000);
    assert.equal(pushPullScale(30_000, 65), 90_000);
    assert.equal(pushPullScale(30_000, 1000), 180_000);
  });

  it('a member pushes/pulls every interval with 20 members and every other one with 40', async () => {
    world = new SimWorld();
    let outgoing = 0;
    const a = member('10.0.0.1', {
      pushPullIntervalMs: 1000,
      stats: { pushPull: (dir, ok) => void (dir === 'out' && ok && outgoing++) },
    });
    await joinAll(
      Array.from({ length: 19 }, (_, i) => member(`10.0.1.${i + 1}`, { passive: true })),
      '10.0.0.1',
    );
    assert.equal(a.numMembers(), 20);
    await world.clock.advance(2000); // past the push/pull scheduled before the joins
    outgoing = 0;
    await world.clock.advance(20_000);
    assert.ok(outgoing >= 18 && outgoing <= 21, `${outgoing} push/pulls in 20 s with 20 members`);

    await joinAll(
      Array.from({ length: 20 }, (_, i) => member(`10.0.2.${i + 1}`, { passive: true })),
      '10.0.0.1',
    );
    assert.equal(a.numMembers(), 40);
    await world.clock.advance(2000);
    outgoing = 0;
    await world.clock.advance(20_000);
    assert.ok(outgoing >= 9 && outgoing <= 11, `${outgoing} push/pulls in 20 s with 40 members`);
  });
});

describe('gossip targets', () => {
  it('gossips to a dead member for GossipToTheDeadTime, never to one that left', async () => {
    world = new SimWorld();
    const gossip = { gossipToTheDeadMs: 5000 };
    const [a, b, c] = [
      await world.start('10.0.0.1', { gossip }),
      await world.start('10.0.0.2', { gossip, seeds: ['10.0.0.1'] }),
      await world.start('10.0.0.3', { gossip, seeds: ['10.0.0.1'] }),
    ];
    const d = await world.start('10.0.0.4', { gossip, seeds: ['10.0.0.1'] });
    await world.converge([a, b, c, d], 4);
    // Packets A sends, by destination, with the simulated time they were sent at.
    const sent: Array<{ to: string; at: number }> = [];
    world.net.taps.push((from, to) => {
      if (from.host === a.host) sent.push({ to: to.host, at: world.clock.now() });
    });
    // Keep A's broadcast queue busy (gossip rounds only send when there is something to send).
    let driving = true;
    const drive = (async () => {
      while (driving) {
        a.cluster.memberlist.updateNode();
        await world.clock.advance(100);
      }
    })();
    try {
      const leaving = c.cluster.leave(1000);
      await world.clock.advance(1100);
      await leaving;
      await c.cluster.stop();
      await world.clock.until(() => world.stateOf(a, c) === 'left', 3000);
      const leftAt = world.clock.now();
      await b.cluster.stop(); // no leave: B dies
      await world.clock.until(() => world.stateOf(a, b) === 'dead', 30_000, 10);
      const deadAt = world.clock.now();
      await world.clock.until(() => a.cluster.memberlist.member(b.name) === null, 30_000, 100);
      await world.clock.advance(3000);
      driving = false;
      await drive;

      const toB = sent.filter((p) => p.to === b.host && p.at > deadAt);
      assert.ok(toB.length >= 10, `${toB.length} packets to the dead member in its first 5 s`);
      for (const p of toB)
        assert.ok(
          p.at - deadAt <= 5000 + 200,
          `a packet to the dead member ${p.at - deadAt} ms after its death`,
        );
      const toC = sent.filter((p) => p.to === c.host && p.at > leftAt);
      assert.deepEqual(toC, [], 'nothing is sent to a member that left');
      assert.ok(
        sent.filter((p) => p.to === d.host && p.at > deadAt + 6000).length > 0,
        'D still gets gossip',
      );
    } finally {
      driving = false;
      await drive;
    }
  });
});

describe('awareness (Lifeguard) from nacks', () => {
  it('a failed probe nacked by every helper leaves the health score alone', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(4);
    await world.converge(nodes, 4);
    const [a, , , d] = nodes;
    world.net.isolate(
      d.host,
      nodes.map((n) => n.host),
    );
    let worst = 0;
    await world.clock.until(
      () => {
        worst = Math.max(worst, a.cluster.memberlist.healthScore);
        return world.stateOf(a, d) === 'dead';
      },
      30_000,
      10,
    );
    assert.ok((await metricValue(a.registry, 'oklog_cluster_probes_total', { result: 'failed' })) >= 1);
    assert.equal(worst, 0, 'the helpers answered with nacks: the fault is not ours');
  });

  it('a failed probe with missing nacks raises the score by the number missing', async () => {
    world = new SimWorld();
    const nodes = await world.startMany(4);
    await world.converge(nodes, 4);
    const [a] = nodes;
    assert.equal(a.cluster.memberlist.healthScore, 0);
    // A is the one cut off: its probes fail and neither of the two helpers' nacks arrives.
    world.net.isolate(
      a.host,
      nodes.map((n) => n.host),
    );
    const failed = () => metricValue(a.registry, 'oklog_cluster_probes_total', { result: 'failed' });
    let seen = 0;
    for (let t = 0; t < 10_000 && seen === 0; t += 10) {
      await world.clock.advance(10);
      seen = await failed();
    }
    assert.equal(seen, 1);
    assert.equal(a.cluster.memberlist.healthScore, 2, 'two helpers, two missing nacks');
  });
});

describe('protocol version negotiation', () => {
  const state = (name: string, host: string, vsn: number[]): PushNodeState => ({
    name,
    addr: ipToBytes(host) as Buffer,
    port: 7946,
    meta: null,
    incarnation: 1,
    state: 0,
    vsn: Buffer.from(vsn),
  });

  it('rejects a push/pull with a member whose versions exclude ours, and merges none of it', async () => {
    world = new SimWorld();
    const a = await world.start('10.0.0.1');
    const fake = world.net.transport('10.0.0.99');
    const user = Buffer.from('{}');
    const errors = () =>
      metricValue(a.registry, 'oklog_cluster_push_pulls_total', { direction: 'in', result: 'error' });
    const cases: Array<[string, number[]]> = [
      ['speaks only 1', [1, 1, 1, 0, 0, 0]],
      ['needs at least 3', [3, 5, 3, 0, 0, 0]],
      ['needs delegate 1', [1, 5, 2, 1, 1, 1]],
    ];
    for (const [i, [why, vsn]] of cases.entries()) {
      const reply = await pushPullTo(world, fake, a.host, [state(`v-${i}`, '10.0.3.1', vsn)], user);
      assert.equal(a.cluster.memberlist.member(`v-${i}`), null, `${why}: not merged`);
      assert.ok(reply.length > 0, `${why}: still answered with our state, as memberlist does`);
      assert.equal(await errors(), i + 1, `${why}: counted as a failed push/pull`);
    }
    // Compatible versions (a newer peer that still speaks 2) are merged.
    await pushPullTo(world, fake, a.host, [state('v-ok', '10.0.3.1', [2, 5, 5, 0, 0, 0])], user);
    assert.equal(a.cluster.memberlist.member('v-ok')?.state, 'alive');
  });

  it('ignores alives with invalid protocol versions', async () => {
    world = new SimWorld();
    const a = await world.start('10.0.0.1');
    const fake = world.net.transport('10.0.0.99');
    const alive = (name: string, vsn: number[]) =>
      fake.sendPacket(
        encodePacket(
          encodeAlive({
            incarnation: 1,
            node: name,
            addr: ipToBytes('10.0.3.2') as Buffer,
            port: 7946,
            meta: null,
            vsn: Buffer.from(vsn),
          }),
          plain,
        ),
        { host: a.host, port: 7946 },
      );
    const invalid: Array<[string, number[]]> = [
      ['pmin 0', [0, 5, 2, 0, 0, 0]],
      ['pmax 0', [1, 0, 1, 0, 0, 0]],
      ['pmin > pmax', [3, 2, 2, 0, 0, 0]],
      ['pcur > pmax', [1, 5, 6, 0, 0, 0]],
      ['pcur < pmin', [2, 5, 1, 0, 0, 0]],
      ['dmin > dmax', [1, 5, 2, 2, 1, 1]],
      ['dcur > dmax', [1, 5, 2, 0, 1, 2]],
    ];
    for (const [why] of invalid) alive(why, invalid.find(([w]) => w === why)?.[1] ?? []);
    alive('three versions only', [1, 5, 2]); // malformed: memberlist always sends six
    alive('valid', [1, 5, 2, 0, 0, 0]);
    await world.clock.advance(20);
    for (const [why] of invalid) assert.equal(a.cluster.memberlist.member(why), null, why);
    assert.equal(a.cluster.memberlist.member('three versions only'), null);
    assert.equal(a.cluster.memberlist.member('valid')?.state, 'alive');
    assert.equal(
      await metricValue(a.registry, 'oklog_cluster_dropped_packets_total', { reason: 'malformed' }),
      1,
    );
  });
});

describe('packet size', () => {
  const key = new Keyring([randomBytes(32)]);
  for (const o of [
    { what: 'plain', keyring: undefined, label: '' },
    { what: 'encrypted', keyring: key, label: '' },
    { what: 'encrypted and labelled', keyring: key, label: 'oklog-prod' },
  ]) {
    it(`${o.what}: piggybacked broadcasts never take a packet past 1400 bytes (+5 for a CRC)`, async () => {
      world = new SimWorld();
      const opts = { keyring: o.keyring, label: o.label, gossip: { enableCompression: false } };
      const a = await world.start('10.0.0.1', opts);
      const b = await world.start('10.0.0.2', { ...opts, seeds: ['10.0.0.1'] });
      const c = await world.start('10.0.0.3', { ...opts, seeds: ['10.0.0.1'] });
      await world.converge([a, b, c], 3);
      const sizes: Array<{ len: number; crc: boolean }> = [];
      world.net.taps.push((from, _to, buf) => {
        if (from.host !== a.host) return;
        const { rest } = stripLabel(buf);
        const inner = o.keyring
          ? decryptPayload(o.keyring, rest, o.label ? Buffer.from(o.label) : null)
          : rest;
        sizes.push({ len: buf.length, crc: inner[0] === MsgType.hasCrc });
      });
      // Many alives of every size up to 512 bytes of metadata, about new members, from outside:
      // A re-gossips each one, piggybacked on its pings, acks and gossip rounds.
      const fake = world.net.transport('10.0.0.99');
      const random = seededRandom(5);
      for (let i = 0; i < 300; i++) {
        const meta = Buffer.alloc(Math.floor(random() * 512), 0x61);
        const msg = encodeAlive({
          incarnation: 1,
          node: `member-${i}-${'x'.repeat(Math.floor(random() * 40))}`,
          addr: ipToBytes(`10.1.${i >> 8}.${i & 255}`) as Buffer,
          port: 7946,
          meta,
          vsn: VSN,
        });
        fake.sendPacket(
          encodePacket(msg, { compress: false, crc: false, keyring: o.keyring ?? null, label: o.label }),
          { host: a.host, port: 7946 },
        );
        if (i % 10 === 9) await world.clock.advance(50);
      }
      await world.clock.advance(5000);
      assert.ok(sizes.length > 100, `${sizes.length} packets`);
      for (const s of sizes)
        assert.ok(s.len <= 1400 + (s.crc ? 5 : 0), `a ${s.len}-byte packet (crc ${s.crc})`);
      const max = Math.max(...sizes.map((s) => s.len));
      assert.ok(max >= 1300, `packets are filled (largest ${max} bytes)`);
    });
  }
});
