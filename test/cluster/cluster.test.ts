// Real sockets on 127.0.0.x: join, GET /cluster/peers, /_clusterstate JSON, metrics, leave,
// failure detection, encryption (and a node with the wrong key kept out); the advertise-address
// rules; the flag specs and start-up errors.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Fastify from 'fastify';
import { Registry } from 'prom-client';
import { calculateAdvertise, candidateAddresses } from '../../node/cluster/advertise.ts';
import {
  AdvertiseAddressError,
  type Cluster,
  clusterFlagSpecs,
  KeyFileError,
  Keyring,
  startCluster,
} from '../../node/cluster/index.ts';
import { parseSeed } from '../../node/cluster/memberlist.ts';
import { parseFlags } from '../../shared/flags.ts';
import { waitFor } from '../helpers/index.ts';
import { FAST, metricValue, silent } from './helpers.ts';

const running: Cluster[] = [];
after(async () => {
  for (const c of running) await c.stop();
});

async function node(
  host: string,
  seeds: string[],
  o: { type?: 'ingest' | 'store' | 'ingeststore'; keyring?: Keyring; apiPort?: number } = {},
) {
  const registry = new Registry();
  const cluster = await startCluster({
    bind: `tcp://${host}:0`,
    seeds,
    type: o.type ?? 'store',
    apiPort: o.apiPort ?? 7650,
    logger: silent,
    registry,
    keyring: o.keyring,
    gossip: FAST,
    seedRetryMinMs: 200,
    seedRetryMaxMs: 500,
  });
  running.push(cluster);
  return { cluster, registry, seed: `${host}:${cluster.advertise.port}` };
}

describe('cluster on real sockets', () => {
  it('joins, serves /cluster/peers, reports state and metrics, leaves and detects failure', async () => {
    const a = await node('127.0.0.1', [], { type: 'ingest', apiPort: 7001 });
    const b = await node('127.0.0.2', [a.seed], { type: 'store', apiPort: 7002 });
    const c = await node('127.0.0.3', [a.seed], { type: 'ingeststore', apiPort: 7003 });
    const d = await node('127.0.0.4', [b.seed], { type: 'store', apiPort: 7004 });
    const all = [a, b, c, d];
    await waitFor(() => all.every((n) => n.cluster.livePeers().length === 4), 'convergence', 5000, 20);

    assert.deepEqual(a.cluster.current('ingest').sort(), ['127.0.0.1:7001', '127.0.0.3:7003']);
    assert.deepEqual(a.cluster.current('store').sort(), [
      '127.0.0.2:7002',
      '127.0.0.3:7003',
      '127.0.0.4:7004',
    ]);
    assert.deepEqual(a.cluster.current('ingeststore'), ['127.0.0.3:7003']);

    const app = Fastify();
    await app.register(b.cluster.routes);
    const res = await app.inject({ method: 'GET', url: '/cluster/peers' });
    assert.equal(res.statusCode, 200);
    const peers = res.json() as Array<Record<string, string>>;
    assert.equal(peers.length, 4);
    const pc = peers.find((p) => p.name === c.cluster.name);
    assert.deepEqual(pc, {
      name: c.cluster.name,
      type: 'ingeststore',
      apiAddr: '127.0.0.3:7003',
      gossipAddr: `127.0.0.3:${c.cluster.advertise.port}`,
      state: 'alive',
    });
    await app.close();

    const st = a.cluster.clusterState() as {
      self: Record<string, unknown>;
      members: unknown[];
      n: number;
      delegate: Record<string, unknown>;
    };
    assert.equal(st.n, 4);
    assert.equal(st.members.length, 4);
    assert.deepEqual(Object.keys(st.self).sort(), [
      'Addr',
      'DCur',
      'DMax',
      'DMin',
      'Meta',
      'Name',
      'PCur',
      'PMax',
      'PMin',
      'Port',
    ]);
    assert.equal(st.self.PCur, 2);
    assert.deepEqual(st.delegate[d.cluster.name], { type: 'store', api_addr: '127.0.0.4', api_port: 7004 });
    assert.match(await a.registry.metrics(), /^oklog_cluster_size 4$/m);
    assert.ok(/^[a-f0-9-]{36}$/.test(a.cluster.name), 'a UUIDv4 name per start');

    // Graceful leave: left, not dead, and gone from routing at once.
    await d.cluster.leave(1000);
    await d.cluster.stop();
    await waitFor(
      () => [a, b, c].every((n) => n.cluster.memberlist.member(d.cluster.name)?.state === 'left'),
      'leave seen',
      3000,
      20,
    );
    assert.ok(!a.cluster.current('store').includes('127.0.0.4:7004'));

    // A hard stop (no leave) is detected as dead.
    const t0 = Date.now();
    await c.cluster.stop();
    await waitFor(
      () => [a, b].every((n) => n.cluster.memberlist.member(c.cluster.name)?.state === 'dead'),
      'failure detected',
      8000,
      20,
    );
    assert.ok(Date.now() - t0 < 8000);
    assert.deepEqual(a.cluster.current('ingest'), ['127.0.0.1:7001']);
    assert.equal(await metricValue(a.registry, 'oklog_cluster_members', { state: 'dead' }), 1);
    assert.equal(await metricValue(a.registry, 'oklog_cluster_members', { state: 'left' }), 1);
    await a.cluster.stop();
    await b.cluster.stop();
  });

  it('encrypts gossip; a node with another key cannot join and its packets are counted as dropped', async () => {
    const key = new Keyring([randomBytes(32)]);
    const a = await node('127.0.0.1', [], { keyring: key });
    const b = await node('127.0.0.2', [a.seed], { keyring: key });
    await waitFor(() => a.cluster.size() === 2 && b.cluster.size() === 2, 'encrypted join', 5000, 20);
    const intruder = await node('127.0.0.3', [a.seed], { keyring: new Keyring([randomBytes(32)]) });
    const plain = await node('127.0.0.4', [a.seed]);
    await new Promise((r) => setTimeout(r, 800));
    assert.equal(a.cluster.size(), 2);
    assert.equal(intruder.cluster.size(), 1);
    assert.equal(plain.cluster.size(), 1);
    assert.ok(
      (await metricValue(a.registry, 'oklog_cluster_dropped_packets_total', { reason: 'decrypt' })) >= 2,
    );
    for (const n of [a, b, intruder, plain]) await n.cluster.stop();
  });

  it('key rotation as with memberlist keyrings: each step interoperates with the one before', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(16);
    const stable = async (nodes: Array<Awaited<ReturnType<typeof node>>>, what: string) => {
      const n = nodes.length;
      await waitFor(() => nodes.every((x) => x.cluster.livePeers().length === n), what, 5000, 20);
      // Several probe rounds and push/pulls later, still everyone alive everywhere: each pair can
      // read the other's packets, not only the ones that happened to go one way.
      await new Promise((r) => setTimeout(r, 1000));
      for (const x of nodes) {
        assert.deepEqual(
          x.cluster.livePeers().map((p) => p.state),
          Array(n).fill('alive'),
          `${what}: ${x.seed} sees everyone alive`,
        );
        assert.equal(
          await metricValue(x.registry, 'oklog_cluster_dropped_packets_total', { reason: 'decrypt' }),
          0,
          `${what}: ${x.seed} could decrypt everything`,
        );
      }
    };
    // Step 0 → 1: a node still on the old key alone, one with the new key added as secondary.
    const old = await node('127.0.0.1', [], { keyring: new Keyring([oldKey]) });
    const s1 = await node('127.0.0.2', [old.seed], { keyring: new Keyring([oldKey, newKey]) });
    await stable([old, s1], 'old key and old+new');
    await old.cluster.stop();
    // Step 1 → 2: the new key made primary on one node while another still encrypts with the old.
    const s1b = await node('127.0.0.3', [s1.seed], { keyring: new Keyring([oldKey, newKey]) });
    const s2 = await node('127.0.0.4', [s1.seed], { keyring: new Keyring([newKey, oldKey]) });
    await stable([s1, s1b, s2], 'old+new and new+old');
    await s1.cluster.stop();
    await s1b.cluster.stop();
    // Step 2 → 3: the old key removed; a node with the new key alone joins a new+old node.
    const s3 = await node('127.0.0.5', [s2.seed], { keyring: new Keyring([newKey]) });
    await stable([s2, s3], 'new+old and new');
    // And a node on the old key alone no longer gets in: the cluster encrypts with the new one.
    const stale = await node('127.0.0.6', [s2.seed], { keyring: new Keyring([oldKey]) });
    await new Promise((r) => setTimeout(r, 800));
    assert.equal(stale.cluster.size(), 1, 'the old-key node cannot read the cluster');
    // s2 could read its join, but it never answers s2's probes: it is dropped again.
    await waitFor(() => s2.cluster.size() === 2, 'the old-key node dropped', 5000, 20);
    for (const n of [s2, s3, stale]) await n.cluster.stop();
  });

  it('a wildcard bind is dual-stack: IPv4 peers are seen as IPv4, and IPv6 ones are reached too', async () => {
    const wild = async (advertiseAddr: string, seeds: string[] = []) => {
      const c = await startCluster({
        bind: 'tcp://0.0.0.0:0',
        advertiseAddr,
        seeds,
        type: 'store',
        apiPort: 7650,
        logger: silent,
        registry: new Registry(),
        gossip: FAST,
        seedRetryMinMs: 200,
        seedRetryMaxMs: 500,
      });
      running.push(c);
      return c;
    };
    const stableAlive = async (cs: Cluster[], what: string) => {
      await waitFor(() => cs.every((c) => c.livePeers().length === cs.length), what, 5000, 20);
      await new Promise((r) => setTimeout(r, 800));
      for (const c of cs)
        assert.ok(
          c.livePeers().every((p) => p.state === 'alive'),
          `${what}: all alive`,
        );
    };
    // IPv4: a peer bound to one IPv4 address talks to the dual-stack socket; its packets arrive
    // IPv4-mapped, and must be taken (and answered) as plain IPv4.
    const w4 = await wild('127.0.0.1');
    assert.equal((w4.memberlist as unknown as { transport: { family?: string } }).transport.family, 'dual');
    const v4 = await node('127.0.0.2', [`127.0.0.1:${w4.advertise.port}`]);
    await stableAlive([w4, v4.cluster], 'IPv4 peer');
    assert.deepEqual(
      w4
        .livePeers()
        .map((p) => p.gossipAddr)
        .sort(),
      [`127.0.0.1:${w4.advertise.port}`, `127.0.0.2:${v4.cluster.advertise.port}`],
    );
    assert.equal(await metricValue(v4.registry, 'oklog_cluster_probes_total', { result: 'failed' }), 0);
    // IPv6: the same kind of socket reached over ::1 by a peer bound to ::1 only (where the
    // machine has IPv6 at all).
    const hasIpv6 = Object.values(networkInterfaces()).some((l) => l?.some((a) => a.address === '::1'));
    if (!hasIpv6) {
      for (const c of [w4, v4.cluster]) await c.stop();
      return;
    }
    const w6 = await wild('::1');
    const v6 = await startCluster({
      bind: 'tcp://[::1]:0',
      seeds: [`[::1]:${w6.advertise.port}`],
      type: 'ingest',
      apiPort: 7651,
      logger: silent,
      registry: new Registry(),
      gossip: FAST,
      seedRetryMinMs: 200,
      seedRetryMaxMs: 500,
    });
    running.push(v6);
    await stableAlive([w6, v6], 'IPv6 peer');
    assert.deepEqual(v6.current('store'), ['[::1]:7650']);
    for (const c of [w4, v4.cluster, w6, v6]) await c.stop();
  });

  it('start-up errors are typed and clear', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oklog-clusterkey-'));
    try {
      const bad = join(dir, 'bad.key');
      writeFileSync(bad, 'xyz\n');
      await assert.rejects(
        startCluster({
          bind: 'tcp://127.0.0.1:0',
          seeds: [],
          keyFile: bad,
          type: 'store',
          apiPort: 1,
          logger: silent,
          registry: new Registry(),
        }),
        KeyFileError,
      );
      await assert.rejects(
        startCluster({
          bind: 'tcp://0.0.0.0:0',
          seeds: [],
          type: 'store',
          apiPort: 1,
          logger: silent,
          registry: new Registry(),
          interfaces: () => ({ lo: [] }),
        }),
        AdvertiseAddressError,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('advertise address (reference §5.3, bugs fixed)', () => {
  const iface = (address: string, cidr: string, internal = false) => ({
    address,
    netmask: '',
    family: address.includes(':') ? ('IPv6' as const) : ('IPv4' as const),
    mac: '00:00:00:00:00:00',
    internal,
    cidr,
    scopeid: 0,
  });
  const ifaces = {
    lo: [iface('127.0.0.1', '127.0.0.1/8', true), iface('::1', '::1/128', true)],
    eth0: [iface('203.0.113.7', '203.0.113.7/24'), iface('fe80::1', 'fe80::1/64')],
    eth1: [iface('10.1.0.5', '10.1.0.5/16'), iface('fd00::5', 'fd00::5/64')],
    eth2: [iface('192.168.7.9', '192.168.7.9/24')],
  };
  const lookup = async (h: string) =>
    h === 'one.test' ? ['10.9.9.9'] : h === 'two.test' ? ['10.0.0.1', '10.0.0.2'] : [];

  it('wildcard bind (0.0.0.0, "" and ::) picks a private address: default route first, IPv4, smallest network', async () => {
    for (const bindHost of ['0.0.0.0', '', '::']) {
      const a = await calculateAdvertise({
        bindHost,
        bindPort: 7659,
        interfaces: () => ifaces,
        defaultRouteInterface: () => null,
      });
      assert.deepEqual(a, { ip: '192.168.7.9', port: 7659, source: 'private-ip' });
    }
    const viaRoute = await calculateAdvertise({
      bindHost: '0.0.0.0',
      bindPort: 1,
      interfaces: () => ifaces,
      defaultRouteInterface: () => 'eth1',
    });
    assert.equal(viaRoute.ip, '10.1.0.5');
    const order = candidateAddresses(ifaces, null).map((c) => c.ip);
    assert.deepEqual(order, ['203.0.113.7', '192.168.7.9', '10.1.0.5', 'fd00::5']);
  });

  it('falls back to a public address, and fails clearly when there is none (never a nil IP)', async () => {
    const pub = await calculateAdvertise({
      bindHost: '0.0.0.0',
      bindPort: 1,
      interfaces: () => ({ eth0: ifaces.eth0, lo: ifaces.lo }),
      defaultRouteInterface: () => null,
    });
    assert.equal(pub.source, 'public-ip');
    await assert.rejects(
      calculateAdvertise({ bindHost: '0.0.0.0', bindPort: 1, interfaces: () => ({ lo: ifaces.lo }) }),
      /set -cluster.advertise-addr/,
    );
  });

  it('explicit advertise address wins; its port defaults to the bind port', async () => {
    assert.deepEqual(
      await calculateAdvertise({ bindHost: '0.0.0.0', bindPort: 9000, advertiseAddr: '10.2.3.4' }),
      {
        ip: '10.2.3.4',
        port: 9000,
        source: 'advertise-addr',
      },
    );
    assert.equal(
      (await calculateAdvertise({ bindHost: '', bindPort: 9000, advertiseAddr: 'tcp://10.2.3.4:7000' })).port,
      7000,
    );
    assert.equal(
      (await calculateAdvertise({ bindHost: '', bindPort: 9000, advertiseAddr: '10.2.3.4:7001' })).port,
      7001,
    );
    assert.equal(
      (await calculateAdvertise({ bindHost: '1.2.3.4', bindPort: 1, advertiseAddr: 'one.test', lookup })).ip,
      '10.9.9.9',
    );
    // A name resolving to several addresses falls back to the bind address.
    assert.deepEqual(
      await calculateAdvertise({ bindHost: '1.2.3.4', bindPort: 5, advertiseAddr: 'two.test', lookup }),
      {
        ip: '1.2.3.4',
        port: 5,
        source: 'bind-addr',
      },
    );
    assert.equal((await calculateAdvertise({ bindHost: '::ffff:10.0.0.1', bindPort: 5 })).ip, '10.0.0.1');
    assert.equal((await calculateAdvertise({ bindHost: 'one.test', bindPort: 5, lookup })).ip, '10.9.9.9');
    await assert.rejects(
      calculateAdvertise({ bindHost: 'two.test', bindPort: 5, lookup }),
      /resolved to 2 IPs/,
    );
    await assert.rejects(
      calculateAdvertise({ bindHost: '', bindPort: 5, advertiseAddr: '0.0.0.0' }),
      AdvertiseAddressError,
    );
  });
});

describe('flags and seeds', () => {
  it('OK Log flag names and defaults; -peer repeats', () => {
    const p = parseFlags(clusterFlagSpecs(), ['-peer', 'a:1', '-peer=b', '-cluster.key', '/k']);
    assert.equal(p.values.cluster, 'tcp://0.0.0.0:7659');
    assert.equal(p.values['cluster.advertise-addr'], '');
    assert.deepEqual(p.values.peer, ['a:1', 'b']);
    assert.equal(p.values['cluster.key'], '/k');
  });

  it('seeds default to our own bind port, as memberlist', () => {
    assert.deepEqual(parseSeed('10.0.0.1', 7659), { host: '10.0.0.1', port: 7659 });
    assert.deepEqual(parseSeed('node-a:7000', 7659), { host: 'node-a', port: 7000 });
    assert.deepEqual(parseSeed('[::1]:7000', 7659), { host: '::1', port: 7000 });
    assert.deepEqual(parseSeed('::1', 7659), { host: '::1', port: 7659 });
    assert.deepEqual(parseSeed('name/10.0.0.1:1', 7659), { host: '10.0.0.1', port: 1 });
    assert.deepEqual(parseSeed('tcp://h.example:2', 7659), { host: 'h.example', port: 2 });
    assert.throws(() => parseSeed('h:notaport', 1), /invalid/);
  });
});
