// Fuzzing the gossip decoders for a bounded time: random and mutated packets and streams must
// be dropped (counted), never thrown out of the handlers or crash the node, and memory stays
// bounded. Also hostile TCP streams against a real socket: oversized claims, silence, floods.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { after, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { type Cluster, startCluster } from '../../node/cluster/cluster.ts';
import { Keyring } from '../../node/cluster/crypto.ts';
import { GossipDecodeError } from '../../node/cluster/errors.ts';
import { MsgWriter } from '../../node/cluster/msgpack.ts';
import { decodePacket, encodePacket } from '../../node/cluster/packet.ts';
import { BufferSource, frameStream, openStream } from '../../node/cluster/stream.ts';
import {
  decodeAck,
  decodeAlive,
  decodeDead,
  decodeIndirectPing,
  decodeNack,
  decodePing,
  decodeSuspect,
  encodeAlive,
  encodeDead,
  encodeSuspect,
  MsgType,
  makeCompound,
  writePushNodeState,
  writePushPullHeader,
} from '../../node/cluster/wire.ts';
import { waitFor } from '../helpers/index.ts';
import { ourWire } from './fixtures/wire-samples.ts';
import { FAST, metricValue, pushPullFrame, SimWorld, silent } from './helpers.ts';
import type { SimTransport } from './sim.ts';

const DECODERS: Record<number, (b: Buffer) => unknown> = {
  [MsgType.ping]: decodePing,
  [MsgType.indirectPing]: decodeIndirectPing,
  [MsgType.ack]: decodeAck,
  [MsgType.nack]: decodeNack,
  [MsgType.suspect]: decodeSuspect,
  [MsgType.alive]: decodeAlive,
  [MsgType.dead]: decodeDead,
};

/** A seeded xorshift, so a failure can be replayed from the printed seed. */
function rng(seed: number) {
  let x = seed || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}

const INTERESTING = [
  0x00, 0x7f, 0x80, 0xc0, 0xc1, 0xc4, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 9, 7, 12, 244,
];

function mutate(r: ReturnType<typeof rng>, input: Buffer): Buffer {
  const b = Buffer.from(input);
  const op = r.int(6);
  if (op === 0 && b.length > 0) {
    for (let i = 0; i < 1 + r.int(4); i++) b[r.int(b.length)] ^= 1 << r.int(8);
    return b;
  }
  if (op === 1 && b.length > 0) {
    for (let i = 0; i < 1 + r.int(3); i++) b[r.int(b.length)] = INTERESTING[r.int(INTERESTING.length)];
    return b;
  }
  if (op === 2) return b.subarray(0, r.int(b.length + 1));
  if (op === 3) return Buffer.concat([b, randomBytes(r.int(64))]);
  if (op === 4 && b.length > 4) {
    const at = r.int(b.length - 4);
    b.writeUInt32BE(r.int(2) ? 0xffffffff : r.int(1 << 20), at);
    return b;
  }
  return randomBytes(r.int(200));
}

function corpus(keyring: Keyring): Buffer[] {
  const msgs = Object.values(ourWire());
  const big = makeCompound(
    Array.from({ length: 6 }, (_, i) =>
      encodeAlive({
        incarnation: i + 1,
        node: `n${i}`,
        addr: Buffer.from([10, 0, 0, i]),
        port: 7946,
        meta: Buffer.alloc(60, 'x'),
        vsn: Buffer.from([1, 5, 2, 0, 0, 0]),
      }),
    ),
  );
  const plain = { keyring: null, label: '' };
  const out: Buffer[] = [];
  for (const m of [...msgs, big, makeCompound(msgs.slice(0, 5))]) {
    out.push(encodePacket(m, { ...plain, compress: false, crc: false }));
    out.push(encodePacket(m, { ...plain, compress: true, crc: true }));
    out.push(encodePacket(m, { keyring, label: '', compress: true, crc: false }));
    out.push(encodePacket(m, { keyring: null, label: 'x', compress: true, crc: false }));
  }
  return out;
}

function pushPullStream(nodes: number, user: Buffer, compress: boolean): Buffer {
  const w = new MsgWriter();
  w.byte(MsgType.pushPull);
  writePushPullHeader(w, { nodes, userStateLen: user.length, join: false });
  for (let i = 0; i < nodes; i++) {
    writePushNodeState(w, {
      name: `s${i}`,
      addr: Buffer.from([10, 1, 0, i]),
      port: 7946,
      meta: null,
      incarnation: 1,
      state: i % 4,
      vsn: Buffer.from([1, 5, 2, 0, 0, 0]),
    });
  }
  w.bytes(user);
  return frameStream(w.finish(), { compress, keyring: null, label: '' });
}

describe('fuzzing the gossip decoders', () => {
  it('packet decoding never throws anything but GossipDecodeError', () => {
    const seed = Date.now() >>> 0;
    const r = rng(seed);
    const keyring = new Keyring([randomBytes(16)]);
    const seeds = corpus(keyring);
    const rss0 = process.memoryUsage().rss;
    const end = Date.now() + 1200;
    let n = 0;
    while (Date.now() < end) {
      const input = mutate(r, seeds[r.int(seeds.length)]);
      for (const sec of [
        { keyring: null, label: '' },
        { keyring, label: '' },
      ]) {
        try {
          const d = decodePacket(input, sec);
          for (const m of d.messages) {
            try {
              DECODERS[m.type]?.(m.body);
            } catch (err) {
              if (!(err instanceof GossipDecodeError)) throw err;
            }
          }
        } catch (err) {
          if (!(err instanceof GossipDecodeError)) {
            assert.fail(`seed ${seed}, input ${input.toString('hex')}: ${(err as Error).stack}`);
          }
        }
      }
      n++;
    }
    assert.ok(n > 1000, `${n} inputs`);
    assert.ok(process.memoryUsage().rss - rss0 < 256 * 1024 * 1024, 'bounded memory');
  });

  it('a live node drops hostile packets and streams, counts them, and keeps working', async () => {
    const seed = (Date.now() >>> 0) ^ 0x5eed;
    const r = rng(seed);
    const world = new SimWorld(seed);
    try {
      const [a, b] = await world.startMany(2, { gossip: { maxNodes: 300 } });
      await world.converge([a, b], 2);
      const target = world.net.endpoints.get(`${a.host}:7946`) as SimTransport;
      const seeds = corpus(new Keyring([randomBytes(16)]));
      // Accusations and fake members, valid on the wire, to exercise the state machine too.
      for (let i = 0; i < 20; i++) {
        seeds.push(encodeSuspect({ incarnation: i, node: a.name, from: `x${i}` }));
        seeds.push(encodeDead({ incarnation: i, node: b.name, from: `x${i}` }));
      }
      const streams = [
        pushPullStream(3, Buffer.from('{"s0":{"type":"store","api_addr":"1","api_port":1}}'), true),
      ];
      streams.push(pushPullStream(5, Buffer.from('not json'), false));
      const fake = world.net.transport('10.0.0.66');
      const end = Date.now() + 1200;
      let packets = 0;
      let conns = 0;
      while (Date.now() < end) {
        for (let i = 0; i < 50; i++) {
          const input = mutate(r, seeds[r.int(seeds.length)]);
          try {
            target.packetHandler(input, { host: '10.0.0.66', port: 7946 });
          } catch (err) {
            assert.fail(
              `seed ${seed}: packet handler threw on ${input.toString('hex')}: ${(err as Error).stack}`,
            );
          }
          packets++;
        }
        const dial = fake.dial({ host: a.host, port: 7946 }, 500);
        await world.clock.advance(2);
        const conn = await dial;
        conn.onData(() => {});
        conn.write(mutate(r, streams[r.int(streams.length)]));
        if (r.int(2)) conn.end();
        conns++;
        await world.clock.advance(20);
      }
      await world.clock.advance(15_000); // deadlines of silent streams pass
      assert.ok(packets > 1000 && conns > 20, `${packets} packets, ${conns} streams`);
      assert.ok(a.cluster.memberlist.allMembers().length <= 300, 'member cap holds');
      assert.ok((await metricValue(a.registry, 'oklog_cluster_dropped_packets_total')) > 100);
      // Still working: a new node joins through a and both converge. (b may rightly stay dead:
      // the fuzzer forges deaths at incarnations b cannot outbid, which is why -cluster.key exists.)
      const c = await world.start('10.0.0.3', { seeds: ['10.0.0.1'] });
      await world.clock.until(
        () => world.stateOf(a, c) === 'alive' && world.stateOf(c, a) === 'alive',
        20_000,
        50,
        'a new member joining the fuzzed node',
      );
    } finally {
      await world.stopAll();
    }
  });

  it('stream framing survives mutations', async () => {
    const r = rng(Date.now() >>> 0);
    const keyring = new Keyring([randomBytes(32)]);
    const seeds = [
      pushPullStream(4, Buffer.from('{}'), true),
      pushPullStream(4, Buffer.from('{}'), false),
      frameStream(Buffer.concat([Buffer.from([MsgType.pushPull]), randomBytes(50)]), {
        compress: true,
        keyring,
        label: '',
      }),
    ];
    const end = Date.now() + 400;
    while (Date.now() < end) {
      const input = mutate(r, seeds[r.int(seeds.length)]);
      for (const sec of [
        { keyring: null, label: '' },
        { keyring, label: '' },
      ]) {
        try {
          const { source } = await openStream(new BufferSource(input), sec);
          for (let i = 0; i < 5; i++) await source.readValue();
        } catch (err) {
          if (!(err instanceof GossipDecodeError) && (err as Error).name !== 'GossipError') throw err;
        }
      }
    }
  });
});

describe('hostile TCP streams on a real socket', () => {
  let node: Cluster;
  const registry = new Registry();
  after(async () => {
    await node?.stop();
  });

  it('closes oversized, silent and excess connections', async () => {
    node = await startCluster({
      bind: 'tcp://127.0.0.1:0',
      seeds: [],
      type: 'store',
      apiPort: 1,
      logger: silent,
      registry,
      gossip: { ...FAST, tcpTimeoutMs: 1000, maxConcurrentStreams: 4 },
    });
    const port = node.advertise.port;
    const open = (first?: Buffer) =>
      new Promise<{ closedIn: Promise<number>; destroy: () => void }>((resolve, reject) => {
        const t0 = Date.now();
        const s = connect({ host: '127.0.0.1', port }, () => {
          if (first) s.write(first);
          resolve({
            closedIn: new Promise((r) => s.on('close', () => r(Date.now() - t0))),
            destroy: () => s.destroy(),
          });
        });
        s.on('error', () => {});
        s.once('error', reject);
        s.resume(); // read (and discard) any error reply, so the close is seen
      });
    // A plain push/pull that claims a billion nodes, and a huge compressed-stream value: refused at once.
    const w = new MsgWriter().byte(MsgType.pushPull);
    writePushPullHeader(w, { nodes: 1e9, userStateLen: 0, join: false });
    const huge = await open(w.finish());
    const bigValue = await open(
      Buffer.from([MsgType.compress, 0x82, 0xa3, 0x42, 0x75, 0x66, 0xdb, 0x7f, 0xff, 0xff, 0xff]),
    );
    assert.ok((await huge.closedIn) < 900);
    assert.ok((await bigValue.closedIn) < 900);
    // Silence: closed at the stream deadline.
    const silentConn = await open();
    const took = await silentConn.closedIn;
    assert.ok(took >= 900 && took < 3000, `silent stream closed after ${took} ms`);
    // A flood of connections beyond the limit: the excess is refused, the node stays up.
    const flood = await Promise.all(Array.from({ length: 12 }, () => open()));
    await waitFor(
      async () => (await metricValue(registry, 'oklog_cluster_streams_rejected_total')) >= 1,
      'excess streams refused',
      3000,
      20,
    );
    for (const f of flood) f.destroy();
    assert.ok(
      (await metricValue(registry, 'oklog_cluster_dropped_packets_total', { reason: 'too_large' })) >= 2,
    );
    assert.equal(node.size(), 1);
  });
});

describe('a peer that goes on sending after its push/pull was answered', () => {
  let node: Cluster;
  after(async () => {
    await node?.stop();
  });

  it('is cut off, and what it sent is given back to the stream memory budget', async () => {
    node = await startCluster({
      bind: 'tcp://127.0.0.1:0',
      seeds: [],
      type: 'store',
      apiPort: 1,
      logger: silent,
      registry: new Registry(),
      gossip: { ...FAST, maxInboundStreamBytes: 4 * 1024 * 1024 },
    });
    const port = node.advertise.port;
    /** A push/pull; resolves with whether it was answered and whether the node closed it. */
    const pushPull = (trailing: number) =>
      new Promise<{ answered: boolean; closedByNode: boolean }>((resolve) => {
        const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
        let answered = false;
        let closedByNode = false;
        s.on('error', () => {});
        s.on('data', () => {
          answered = true;
        });
        s.on('end', () => {
          closedByNode = true;
        });
        s.on('close', () => resolve({ answered, closedByNode }));
        s.once('connect', async () => {
          s.write(pushPullFrame([], Buffer.from('{}')));
          await waitFor(() => answered, 'push/pull answered', 3000).catch(() => {});
          // Past the exchange: 6 MiB more than the node's whole 4 MiB budget, in 256 KiB writes.
          for (let sent = 0; sent < trailing && !s.destroyed; sent += 256 * 1024)
            await new Promise<void>((r) => s.write(Buffer.alloc(256 * 1024, 0x41), () => r()));
          setTimeout(() => s.destroy(), 200);
        });
      });
    for (let round = 0; round < 3; round++) {
      const hostile = await pushPull(6 * 1024 * 1024);
      assert.ok(hostile.answered, `round ${round}: the exchange itself is answered`);
    }
    // Nothing of theirs is still charged: a well-behaved push/pull is answered, not refused.
    const fine = await pushPull(0);
    assert.ok(fine.answered, 'a later push/pull is answered (the budget was given back)');
  });
});
