// `oklogctl peers` and `oklogctl stats` against tiny fastify servers that serve the shapes of
// /cluster/peers, /ingest/stats and /store/stats; one store node is down.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { main as peersMain } from '../../cli/ctl/peers.ts';
import { main as statsMain } from '../../cli/ctl/stats.ts';
import { clusterRoutes } from '../../node/cluster/routes.ts';
import { freePort } from '../helpers/index.ts';

function sink() {
  let out = '';
  let err = '';
  return {
    io: { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } },
    out: () => out,
    err: () => err,
  };
}

const apps: FastifyInstance[] = [];
let ports: number[] = [];
let deadPort = 0;
let peers: Array<Record<string, string>> = [];

const ingestStats = (i: number) => ({
  segments: {
    active: { count: 1, bytes: 1024 * i },
    flushed: { count: i, bytes: 2 * 1024 * 1024 },
    pending: { count: 0, bytes: 0 },
  },
  connections: { fast: i, durable: 0, bulk: 1 },
  written: { records: 1000 * i, bytes: 150_000 * i },
});
const storeStats = (i: number) => ({
  segments: { count: 10 * i, bytes: 128 * 1024 * 1024 },
  trashed: { count: 1, bytes: 5 },
  // As node/store's stats() reports them: ISO 8601 times of the first and last records' ULIDs.
  oldestRecord: '2024-11-20T09:14:03.512Z',
  newestRecord: i === 1 ? null : `2024-11-25T17:0${i}:41.007Z`,
});

before(async () => {
  ports = [await freePort(), await freePort(), await freePort()];
  deadPort = await freePort();
  peers = [
    {
      name: 'n-ingest',
      type: 'ingest',
      apiAddr: `127.0.0.1:${ports[0]}`,
      gossipAddr: '127.0.0.1:7659',
      state: 'alive',
    },
    {
      name: 'n-both',
      type: 'ingeststore',
      apiAddr: `127.0.0.1:${ports[1]}`,
      gossipAddr: '127.0.0.1:7660',
      state: 'alive',
    },
    {
      name: 'n-store',
      type: 'store',
      apiAddr: `127.0.0.1:${ports[2]}`,
      gossipAddr: '127.0.0.1:7661',
      state: 'suspect',
    },
    {
      name: 'n-dead',
      type: 'store',
      apiAddr: `127.0.0.1:${deadPort}`,
      gossipAddr: '127.0.0.1:7662',
      state: 'alive',
    },
  ];
  for (let i = 0; i < 3; i++) {
    const app = Fastify();
    app.get('/cluster/peers', async () => peers);
    app.get('/ingest/stats', async () => ingestStats(i + 1));
    app.get('/store/stats', async () => storeStats(i + 1));
    await app.listen({ host: '127.0.0.1', port: ports[i] });
    apps.push(app);
  }
});

after(async () => {
  for (const a of apps) await a.close();
});

describe('oklogctl peers', () => {
  it('prints a table of members from any node', async () => {
    const s = sink();
    assert.equal(await peersMain(['-store', `127.0.0.1:${ports[2]}`], s.io), 0);
    const lines = s.out().trim().split('\n');
    assert.match(lines[0], /^NAME\s+TYPE\s+API\s+GOSSIP\s+STATE$/);
    assert.equal(lines.length, 5);
    assert.ok(
      lines.some((l) => /^n-both\s+ingeststore\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:7660\s+alive$/.test(l)),
    );
    assert.equal(s.err(), '');
  });

  it('-o json for scripts; a bare host gets port 7650 semantics via parseAddr', async () => {
    const s = sink();
    assert.equal(await peersMain(['-store', `tcp://127.0.0.1:${ports[0]}`, '-o', 'json'], s.io), 0);
    const list = JSON.parse(s.out());
    assert.equal(list.length, 4);
    assert.deepEqual(Object.keys(list[0]).sort(), ['apiAddr', 'gossipAddr', 'name', 'state', 'type']);
  });

  it('-h, bad flags and an unreachable node: one clear line, no stack trace', async () => {
    let s = sink();
    assert.equal(await peersMain(['-h'], s.io), 0);
    assert.match(s.out(), /^USAGE\n {2}oklogctl peers \[flags\]/);
    assert.match(s.out(), /-store localhost:7650/);
    s = sink();
    assert.equal(await peersMain(['-nope'], s.io), 2);
    assert.match(s.err(), /^oklogctl peers: flag provided but not defined: -nope\n/);
    s = sink();
    assert.equal(await peersMain(['-o', 'xml'], s.io), 2);
    assert.match(s.err(), /-o must be table or json/);
    s = sink();
    assert.equal(await peersMain(['-store', `127.0.0.1:${deadPort}`], s.io), 1);
    assert.equal(s.err().trim().split('\n').length, 1);
    assert.match(s.err(), /^oklogctl peers: GET http:\/\/127\.0\.0\.1:\d+\/cluster\/peers: ECONNREFUSED\n$/);
    assert.doesNotMatch(s.err(), /\n\s+at /);
  });
});

describe('oklogctl stats', () => {
  it('shows ingest and store nodes, flags the missing store node and exits non-zero', async () => {
    const s = sink();
    const code = await statsMain(['-store', `127.0.0.1:${ports[0]}`, '-timeout', '2s'], s.io);
    assert.equal(code, 3);
    const out = s.out();
    assert.match(
      out,
      /^INGEST NODES \(2\)\nNAME\s+API\s+CONNS F\/D\/B\s+ACTIVE\s+FLUSHED\s+PENDING\s+WRITTEN\s+STATUS\n/,
    );
    assert.match(
      out,
      /n-ingest\s+127\.0\.0\.1:\d+\s+1\/0\/1\s+1 \/ 1\.0 KiB\s+1 \/ 2\.0 MiB\s+0 \/ 0 B\s+1000 \/ 146\.5 KiB\s+ok/,
    );
    assert.match(out, /STORE NODES \(3\)/);
    assert.match(
      out,
      /n-store\s+127\.0\.0\.1:\d+\s+30 \/ 128\.0 MiB\s+1 \/ 5 B\s+2024-11-20T09:14:03\.512Z\s+2024-11-25T17:03:41\.007Z\s+ok/,
    );
    assert.match(out, /n-dead\s+.*ERROR: GET http:\/\/127\.0\.0\.1:\d+\/store\/stats: ECONNREFUSED/);
    assert.match(out, /store nodes answered: 2\/3 \(INCOMPLETE\)/);
    assert.match(s.err(), /store node n-dead .* did not answer/);
  });

  it('-o json carries every number and whether all store nodes answered', async () => {
    const s = sink();
    assert.equal(await statsMain(['-store', `127.0.0.1:${ports[1]}`, '-o', 'json'], s.io), 3);
    const j = JSON.parse(s.out());
    assert.equal(j.peers, 4);
    assert.equal(j.allStoreNodesAnswered, false);
    assert.equal(j.allIngestNodesAnswered, true);
    assert.deepEqual(
      j.ingest.map((n: { name: string }) => n.name),
      ['n-ingest', 'n-both'],
    );
    assert.deepEqual(j.ingest[1].stats, ingestStats(2));
    assert.deepEqual(j.store.find((n: { name: string }) => n.name === 'n-both').stats, storeStats(2));
    assert.equal(j.store.find((n: { name: string }) => n.name === 'n-dead').ok, false);
  });

  it('exits 0 when every node answers, 1 when the cluster is unreachable', async () => {
    const saved = peers;
    peers = saved.filter((p) => p.name !== 'n-dead');
    try {
      const s = sink();
      assert.equal(await statsMain(['-store', `127.0.0.1:${ports[0]}`], s.io), 0);
      assert.match(s.out(), /store nodes answered: 2\/2\n$/);
    } finally {
      peers = saved;
    }
    const s = sink();
    assert.equal(await statsMain(['-store', `127.0.0.1:${deadPort}`], s.io), 1);
    assert.equal(s.err().trim().split('\n').length, 1);
  });
});

describe('clusterRoutes before the cluster exists', () => {
  it('answers 503 until the cluster is set, then the live peers', async () => {
    let cluster: { livePeers(): never[] } | null = null;
    const app = Fastify();
    await app.register(clusterRoutes(() => cluster));
    assert.equal((await app.inject({ method: 'GET', url: '/cluster/peers' })).statusCode, 503);
    cluster = { livePeers: () => [] };
    const res = await app.inject({ method: 'GET', url: '/cluster/peers' });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(res.json(), []);
    await app.close();
  });
});
