// SegmentConsumer against in-process fake ingest and store nodes (real HTTP on free ports).
import assert from 'node:assert/strict';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import HashRing from 'hashring';
import { Registry } from 'prom-client';
import { RealFileSystem } from '../../node/fs/index.ts';
import { validateRecords } from '../../node/store/aggregate.ts';
import {
  createConsumerMetrics,
  SegmentConsumer,
  type SegmentConsumerOptions,
} from '../../node/store/consumer.ts';
import { SegmentRejectedError } from '../../node/store/consumer-errors.ts';
import { NodeConsumerHttp } from '../../node/store/http-client.ts';
import { LogLimiter } from '../../node/store/log-limiter.ts';
import { Placement } from '../../node/store/placement.ts';
import { FailureMemo } from '../../node/store/quarantine.ts';
import { sleep, tempDir, waitFor } from '../helpers/index.ts';
import {
  captureLogger,
  FakeIngest,
  FakeStore,
  linesOf,
  MutablePeers,
  rec,
  T0,
  ulidAt,
} from './consumer-fakes.ts';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function ingests(...segs: (string | Buffer)[][]): Promise<FakeIngest[]> {
  const out = await Promise.all(segs.map((s) => new FakeIngest(s).start()));
  for (const i of out) cleanups.push(() => i.close());
  return out;
}

async function stores(n: number): Promise<FakeStore[]> {
  const out = await Promise.all(Array.from({ length: n }, () => new FakeStore().start()));
  for (const s of out) cleanups.push(() => s.close());
  return out;
}

function consumer(
  peers: MutablePeers,
  over: Partial<SegmentConsumerOptions> = {},
): { c: SegmentConsumer; registry: Registry; lines: Record<string, unknown>[] } {
  const registry = new Registry();
  const { logger, lines } = captureLogger();
  const c = new SegmentConsumer({
    peers,
    replicationFactor: 1,
    targetSize: 128 * 1024 * 1024,
    targetAge: 2000,
    delay: 10,
    logger,
    metrics: createConsumerMetrics(registry),
    insufficientBackoffMs: 20,
    ...over,
  });
  cleanups.push(() => c.stop());
  return { c, registry, lines };
}

async function metric(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

function isSortedUnique(lines: string[]): boolean {
  for (let i = 1; i < lines.length; i++) if (lines[i].slice(0, 26) <= lines[i - 1].slice(0, 26)) return false;
  return true;
}

/** The nodes hashring puts first for `key`, computed independently of Placement. */
function ringOrder(key: string, nodes: string[]): string[] {
  return new HashRing([...nodes].sort()).range(key, nodes.length, true);
}

describe('units', () => {
  test('validateRecords accepts sorted records and rejects bad lines without throwing anything else', () => {
    assert.equal(validateRecords(Buffer.from(rec(T0, 0, 'a') + rec(T0, 0, 'dup') + rec(T0 + 1, 0, 'b'))), 3);
    assert.equal(validateRecords(Buffer.alloc(0)), 0);
    const bad = [
      'short\n',
      `${'x'.repeat(26)} default no ulid\n`,
      `${ulidAt(T0).toLowerCase()} default lower case\n`,
      `${ulidAt(T0)}default no space\n`,
      rec(T0 + 1, 0, 'b') + rec(T0, 0, 'a'),
      rec(T0, 0, 'a').slice(0, -1),
      `${ulidAt(T0)}\n`,
    ];
    for (const b of bad) assert.throws(() => validateRecords(Buffer.from(b)), SegmentRejectedError, b);
  });

  test('Placement is hashring order over the normalised node set, distinct, deterministic', () => {
    const p = new Placement();
    const nodes = ['127.0.0.1:3', '127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:1'];
    const key = ulidAt(T0, 7);
    const a = p.order(key, nodes);
    assert.deepEqual(a, ringOrder(key, ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']));
    assert.equal(new Set(a).size, 3);
    assert.deepEqual(new Placement().order(key, [...nodes].reverse()), a);
    assert.deepEqual(p.order(key, ['127.0.0.1:9']), ['127.0.0.1:9']);
    assert.deepEqual(p.order(key, []), []);
    // Different keys spread over the nodes.
    const firsts = new Set(Array.from({ length: 200 }, (_, i) => p.order(ulidAt(T0 + i * 997, i), nodes)[0]));
    assert.equal(firsts.size, 3);
  });

  test('FailureMemo counts per key, forgets after its TTL and beyond its bound', () => {
    let t = 0;
    const m = new FailureMemo(() => t, 2, 1000);
    assert.equal(m.fail('a'), 1);
    assert.equal(m.fail('a'), 2);
    t = 5000;
    assert.equal(m.fail('a'), 1);
    m.fail('b');
    m.fail('c');
    assert.equal(m.size, 2);
    assert.equal(m.fail('a'), 1); // evicted as the oldest
  });

  test('LogLimiter logs the first occurrence, then at most once per interval with a count', () => {
    let t = 0;
    const l = new LogLimiter(1000, () => t);
    assert.equal(l.take('k'), 0);
    assert.equal(l.take('k'), null);
    assert.equal(l.take('k'), null);
    t = 1500;
    assert.equal(l.take('k'), 2);
    l.reset('k');
    assert.equal(l.take('k'), 0);
  });
});

describe('NodeConsumerHttp', () => {
  test('an upload answered early (e.g. 400 for a bad body) returns that answer, not a write error', async () => {
    const server = createServer((req, res) => {
      res.writeHead(400, { 'Content-Type': 'text/plain', Connection: 'close' });
      res.end('invalid records: line 1 does not start with a ULID and a space\n');
      req.resume();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const port = (server.address() as AddressInfo).port;
    const http = new NodeConsumerHttp();
    let produced = 0;
    async function* endless() {
      const chunk = Buffer.alloc(1 << 20, 0x61);
      for (let i = 0; i < 2000; i++) {
        produced += chunk.length;
        yield chunk;
      }
    }
    const r = await http.upload(`http://127.0.0.1:${port}/store/replicate`, endless());
    http.close();
    assert.equal(r.status, 400);
    assert.match(r.body.toString(), /invalid records/);
    assert.ok(produced < 1000 * (1 << 20), 'stopped producing the body once answered');
  });

  test('control calls time out; reads cut short are errors', async () => {
    const server = createServer((req, res) => {
      if (req.url === '/slow') return; // never answers
      res.writeHead(200, { 'Content-Length': 100 });
      res.write('only part');
      setTimeout(() => res.destroy(), 20);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const port = (server.address() as AddressInfo).port;
    const http = new NodeConsumerHttp({ controlTimeoutMs: 200 });
    await assert.rejects(http.control('GET', `http://127.0.0.1:${port}/slow`), { code: 'OKLOG_ERR_TIMEOUT' });
    await assert.rejects(http.read(`http://127.0.0.1:${port}/cut`, 1000));
    // Announced larger than the caller takes: refused from the header, a typed error with the size.
    await assert.rejects(http.read(`http://127.0.0.1:${port}/cut`, 10), {
      code: 'OKLOG_ERR_SEGMENT_TOO_LARGE',
      context: { url: `http://127.0.0.1:${port}/cut`, size: 100, max: 10 },
    });
    http.close();
  });

  test('a segment announced larger than the bound is refused before its body, or streamed to a sink', async () => {
    const huge = 10 * 1024 * 1024 * 1024; // 10 GiB announced; only 1000 bytes ever come
    const body = Buffer.alloc(1000, 0x61);
    const server = createServer((req, res) => {
      if (req.url === '/huge') {
        res.writeHead(200, { 'Content-Length': huge });
        res.write(body.subarray(0, 10)); // then stalls: a client reading the body would hang
        return;
      }
      if (req.url === '/chunked') {
        res.writeHead(200); // no Content-Length: the length is only found by counting
        res.end(body);
        return;
      }
      res.writeHead(200, { 'Content-Length': body.length });
      res.end(body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const http = new NodeConsumerHttp({ readIdleTimeoutMs: 20_000 });
    const t = Date.now();
    await assert.rejects(http.read(`${base}/huge`, 100), (err: unknown) => {
      const e = err as { code: string; context: { size: number; max: number } };
      assert.deepEqual([e.code, e.context.size, e.context.max], ['OKLOG_ERR_SEGMENT_TOO_LARGE', huge, 100]);
      return true;
    });
    let asked = -1;
    await assert.rejects(
      http.read(`${base}/huge`, 100, undefined, async (size) => {
        asked = size;
        return null; // refused: the same error
      }),
      { code: 'OKLOG_ERR_SEGMENT_TOO_LARGE' },
    );
    assert.equal(asked, huge);
    assert.ok(Date.now() - t < 5000, 'nothing waited for the body');
    const got: Buffer[] = [];
    const r = await http.read(`${base}/whole`, 100, undefined, async () => ({
      write: async (c: Buffer) => {
        got.push(Buffer.from(c));
      },
    }));
    assert.equal(r.status, 200);
    assert.equal(r.spilled, body.length);
    assert.equal(r.body.length, 0, 'nothing held in memory');
    assert.deepEqual(Buffer.concat(got), body);
    await assert.rejects(http.read(`${base}/chunked`, 100), { code: 'OKLOG_ERR_BODY_LENGTH' });
    http.close();
  });

  test('a replication answer that does not come is reported as such, not as missing upload progress', async () => {
    const server = createServer((req) => {
      req.resume(); // takes the whole body, never answers
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const port = (server.address() as AddressInfo).port;
    const http = new NodeConsumerHttp({ uploadIdleTimeoutMs: 60_000, replicateResponseTimeoutMs: 300 });
    async function* one() {
      yield Buffer.from(rec(T0, 0, 'x'));
    }
    const t = Date.now();
    await assert.rejects(http.upload(`http://127.0.0.1:${port}/store/replicate`, one()), (err: unknown) => {
      const e = err as { code: string; context: { phase: string; ms: number } };
      assert.equal(e.code, 'OKLOG_ERR_TIMEOUT');
      assert.deepEqual([e.context.phase, e.context.ms], ['answer after upload', 300]);
      return true;
    });
    assert.ok(Date.now() - t < 5000);
    http.close();
  });

  test('a control call reset on a reused connection is sent once more, and says so', async () => {
    let commits = 0;
    const server = createServer((req, res) => {
      req.resume();
      commits++;
      if (commits === 2) {
        // Acted on, then the connection dies before the answer (the peer restarted, say).
        req.socket.destroy();
        return;
      }
      res.writeHead(commits === 1 ? 200 : 404, { 'Content-Length': 2 });
      res.end('ok');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ingest/commit?id=x`;
    const http = new NodeConsumerHttp();
    const first = await http.control('POST', url);
    assert.equal(first.status, 200);
    assert.equal(first.retried, undefined);
    const second = await http.control('POST', url); // on the kept-alive connection
    assert.equal(commits, 3, 'sent twice');
    assert.equal(second.status, 404);
    assert.equal(second.retried, true);
    http.close();
  });
});

describe('SegmentConsumer', () => {
  test('gathers, merges with dedupe, replicates to the ring-chosen nodes and commits', async () => {
    // Overlapping segments; one record is on both ingesters (first copy wins), one twice in a segment.
    const a1 = rec(T0, 0, 'a0') + rec(T0 + 2, 0, 'a2') + rec(T0 + 4, 0, 'a4');
    const a2 = rec(T0 + 5, 0, 'a5') + rec(T0 + 5, 0, 'a5 again') + rec(T0 + 8, 0, 'a8');
    const b1 = rec(T0 + 1, 0, 'b1') + rec(T0 + 2, 0, 'b2 dup of a2') + rec(T0 + 6, 0, 'b6');
    const [ia, ib] = await ingests([a1, a2], [b1]);
    const ss = await stores(3);
    const peers = new MutablePeers(
      [ia.addr, ib.addr],
      ss.map((s) => s.addr),
    );
    let k = 0;
    const { c, registry } = consumer(peers, { replicationFactor: 2, random: () => (k++ % 2) * 0.5 });
    c.start();
    await waitFor(() => ia.committed.length === 2 && ib.committed.length === 1, 'all claims committed');
    await c.stop();

    const got = ss.filter((s) => s.received.length > 0);
    assert.equal(got.length, 2, 'exactly replication-factor nodes got the segment');
    const first = ulidAt(T0);
    const expected = ringOrder(
      first,
      ss.map((s) => s.addr),
    )
      .slice(0, 2)
      .sort();
    assert.deepEqual(got.map((s) => s.addr).sort(), expected);
    const [r1, r2] = got.map((s) => s.received[0]);
    assert.ok(r1.body.equals(r2.body), 'replicas are identical');
    assert.ok(r1.chunked && r1.contentLength === undefined, 'body streamed (chunked)');
    const lines = linesOf(r1.body);
    assert.ok(isSortedUnique(lines));
    assert.deepEqual(
      lines.map((l) => l.slice(35)),
      ['a0', 'b1', 'a2', 'a4', 'a5', 'b6', 'a8'],
      'merged in ULID order, first copy of a duplicate kept',
    );
    assert.equal(ia.failedCount + ib.failedCount, 0);
    assert.equal(await metric(registry, 'oklog_store_consumed_segments'), 3);
    assert.equal(await metric(registry, 'oklog_store_consumed_bytes'), Buffer.byteLength(a1 + a2 + b1));
    assert.equal(await metric(registry, 'oklog_store_replicated_segments', { direction: 'egress' }), 2);
    assert.equal(
      await metric(registry, 'oklog_store_replicated_bytes', { direction: 'egress' }),
      2 * r1.body.length,
    );
  });

  test('a failing replica is replaced by the next node along the ring', async () => {
    const seg = rec(T0 + 100, 0, 'x') + rec(T0 + 101, 0, 'y');
    const [ing] = await ingests([seg]);
    const ss = await stores(3);
    const order = ringOrder(
      ulidAt(T0 + 100),
      ss.map((s) => s.addr),
    );
    const byAddr = new Map(ss.map((s) => [s.addr, s]));
    byAddr.get(order[0])!.status = 500;
    const { c, lines } = consumer(new MutablePeers([ing.addr], order), { replicationFactor: 2 });
    c.start();
    await waitFor(() => ing.committed.length === 1, 'committed despite one failed store');
    await c.stop();
    assert.equal(byAddr.get(order[0])!.requests, 1);
    assert.equal(byAddr.get(order[1])!.received.length, 1);
    assert.equal(byAddr.get(order[2])!.received.length, 1, 'the next node on the ring stood in');
    assert.equal(ing.failedCount, 0);
    assert.ok(lines.some((l) => String(l.msg).includes('stand-ins')));
  });

  test('too few replicas succeed: every claim is failed back, nothing committed', async () => {
    const [ing] = await ingests([rec(T0, 0, 'x')]);
    const ss = await stores(2);
    for (const s of ss) s.status = 503;
    const { c, registry } = consumer(
      new MutablePeers(
        [ing.addr],
        ss.map((s) => s.addr),
      ),
      {
        replicationFactor: 2,
        targetAge: 0,
      },
    );
    c.start();
    await waitFor(() => ing.failedCount >= 1, 'claim failed back');
    await c.stop();
    assert.equal(ing.committed.length, 0);
    // Back at its ingester (or, if stop() cut a `next` short, claimed there until the ingester's
    // pending timeout returns it).
    assert.equal(ing.flushed.length + ing.pending, 1, 'the segment is still at its ingester');
    assert.ok(
      (await metric(registry, 'oklog_store_consumer_failed_batches_total', { reason: 'replication' })) >= 1,
    );
  });

  test('fewer live store nodes than the factor: nothing is taken, a rate-limited warning', async () => {
    const [ing] = await ingests([rec(T0, 0, 'x')]);
    const [s, s2] = await stores(2);
    const peers = new MutablePeers([ing.addr], [s.addr]);
    const { c, registry, lines } = consumer(peers, { replicationFactor: 2, warnIntervalMs: 60_000 });
    c.start();
    await waitFor(
      async () => (await metric(registry, 'oklog_store_consumer_underreplicated_total')) >= 5,
      'several refusals',
    );
    assert.equal(ing.nextCalls, 0, 'no segment was claimed');
    assert.equal(ing.flushed.length, 1);
    assert.equal(s.requests, 0);
    const warns = lines.filter((l) => String(l.msg).includes('fewer live store nodes'));
    assert.equal(warns.length, 1, 'warned once, not every tick');
    assert.equal(warns[0].code, 'OKLOG_ERR_INSUFFICIENT_STORES');
    // A second store node comes back: consuming resumes, and says so.
    peers.store = [s.addr, s2.addr];
    await waitFor(() => ing.committed.length === 1, 'consumed once enough stores are back');
    await c.stop();
    assert.equal(s.received.length + s2.received.length, 2);
    assert.ok(lines.some((l) => String(l.msg).includes('enough live store nodes again')));
  });

  test('store nodes are counted by address: a stale gossip entry does not make up the factor', async () => {
    const [ing] = await ingests([rec(T0, 0, 'x')]);
    const [s] = await stores(1);
    // A node restarted under a new name, its old entry not yet gone: the same address twice.
    const peers = new MutablePeers([ing.addr], [s.addr, s.addr]);
    const { c, registry, lines } = consumer(peers, { replicationFactor: 2 });
    c.start();
    await waitFor(
      async () => (await metric(registry, 'oklog_store_consumer_underreplicated_total')) >= 3,
      'refusals',
    );
    await c.stop();
    assert.equal(ing.nextCalls, 0, 'nothing was claimed');
    assert.equal(s.requests, 0);
    const warn = lines.find((l) => String(l.msg).includes('fewer live store nodes'));
    assert.equal(warn?.stores, 1);
  });

  test('a store node leaving mid-transaction fails the gathered claims back', async () => {
    const [ing] = await ingests([rec(T0, 0, 'x'), rec(T0 + 1, 0, 'y')]);
    const ss = await stores(2);
    const peers = new MutablePeers(
      [ing.addr],
      ss.map((s) => s.addr),
    );
    // A long delay: the 404s after the two segments must not end the gather before the change.
    const { c } = consumer(peers, { replicationFactor: 2, targetAge: 60_000, delay: 400 });
    c.start();
    await waitFor(() => ing.pending === 2, 'both segments gathered', 15_000, 5);
    peers.store = [ss[0].addr];
    await waitFor(() => ing.failedCount === 2, 'claims failed back');
    await c.stop();
    assert.equal(ing.committed.length, 0);
    assert.equal(ss[0].requests + ss[1].requests, 0);
  });

  test('a poison segment is failed back once, then quarantined and committed; the ingester moves on', async () => {
    const poison = `${rec(T0, 0, 'fine')}short\n${rec(T0 + 2, 0, 'after')}`;
    const noUlid = `${'Z'.repeat(26)} default not a ulid\n`;
    const good = rec(T0 + 10, 0, 'good');
    const [ing] = await ingests([poison, noUlid, good]);
    const [s] = await stores(1);
    const dir = await tempDir('oklog-quarantine-');
    cleanups.push(dir.cleanup);
    const qdir = join(dir.path, 'quarantine');
    const { c, registry, lines } = consumer(new MutablePeers([ing.addr], [s.addr]), {
      targetAge: 50,
      quarantine: { fs: new RealFileSystem(), dir: qdir },
    });
    c.start();
    await waitFor(() => ing.committed.length === 3, 'poison quarantined, good segment consumed');
    await c.stop();
    assert.equal(ing.failedCount, 2, 'each poison segment failed back once first');
    assert.equal(ing.flushed.length + ing.pending, 0, 'the ingester is empty');
    assert.equal(await metric(registry, 'oklog_store_quarantined_segments_total'), 2);
    assert.equal(await metric(registry, 'oklog_store_consumer_rejected_segments_total'), 4);
    const files = (await readdir(qdir)).sort();
    assert.equal(files.length, 2);
    assert.ok(files.every((f) => f.startsWith('127.0.0.1_') && f.endsWith('.segment')));
    const contents = (await Promise.all(files.map((f) => readFile(join(qdir, f), 'utf8')))).sort();
    assert.deepEqual(contents, [poison, noUlid].sort(), 'quarantined bytes are exactly the segments');
    assert.deepEqual(
      s.received.map((r) => r.body.toString()),
      [good],
    );
    const q = lines.filter((l) => String(l.msg).includes('quarantined after repeated'));
    assert.equal(q.length, 2);
    assert.ok(String(q[0].path).startsWith(qdir));
  });

  test('one failure memo per node: the second failure quarantines, whichever consumer sees it', async () => {
    const poison = `${rec(T0, 0, 'fine')}short\n`;
    const [ing] = await ingests([poison]);
    const [s] = await stores(1);
    const dir = await tempDir('oklog-quarantine-');
    cleanups.push(dir.cleanup);
    const memo = new FailureMemo(Date.now);
    const shared = { quarantine: { fs: new RealFileSystem(), dir: join(dir.path, 'quarantine') }, memo };
    const a = consumer(new MutablePeers([ing.addr], [s.addr]), shared);
    a.c.start();
    await waitFor(() => ing.failedCount === 1, 'the first consumer failed it back');
    await a.c.stop();
    const b = consumer(new MutablePeers([ing.addr], [s.addr]), shared);
    b.c.start();
    await waitFor(() => ing.committed.length === 1, 'quarantined by the second consumer');
    await b.c.stop();
    assert.equal(ing.failedCount, 1, 'failed back once in all');
    assert.equal((await readdir(join(dir.path, 'quarantine'))).length, 1);
  });

  test('an unwritable quarantine folder: the backlog moves on, errors are rate-limited, no spinning', async () => {
    const poison = `${rec(T0, 0, 'fine')}short\n`;
    const goods = Array.from({ length: 5 }, (_, i) => rec(T0 + 10 + i, 0, `good ${i}`));
    const [ing] = await ingests([poison, ...goods]);
    const [s] = await stores(1);
    const dir = await tempDir('oklog-quarantine-');
    cleanups.push(dir.cleanup);
    const qdir = join(dir.path, 'quarantine');
    await writeFile(qdir, 'a plain file where the folder should be');
    const { c, lines, registry } = consumer(new MutablePeers([ing.addr], [s.addr]), {
      targetAge: 20,
      quarantine: { fs: new RealFileSystem(), dir: qdir },
      quarantineRetryMs: 200,
      quarantineRetryMaxMs: 400,
    });
    c.start();
    await waitFor(() => ing.committed.length === 5, 'every good segment consumed behind the poison one');
    await sleep(1500);
    const errors = lines.filter((l) => String(l.msg).includes('could not write poison segment'));
    assert.ok(errors.length >= 1 && errors.length <= 2, `${errors.length} error lines in ~2 s`);
    // Held, then failed back after 200, 400, 400… ms: a handful of attempts, not thousands.
    assert.ok(ing.failedCount <= 12, `failed back ${ing.failedCount} times`);
    assert.ok(ing.nextCalls < 200, `${ing.nextCalls} asks`);
    assert.equal(await metric(registry, 'oklog_store_quarantined_segments_total'), 0);
    // The folder becomes writable: the poison segment is quarantined and committed.
    await rm(qdir);
    await waitFor(() => ing.committed.length === 6, 'quarantined once the folder can be written');
    await c.stop();
    assert.equal(ing.pending + ing.flushed.length, 0);
    assert.deepEqual(await readdir(qdir).then((f) => f.length), 1);
    const got = s.received.flatMap((r) => linesOf(r.body)).map((l) => l.slice(35));
    assert.deepEqual(got.sort(), goods.map((_, i) => `good ${i}`).sort());
  });

  test('an ingest segment larger than the consumer reads: failed back once, then streamed to quarantine', async () => {
    const big = Array.from({ length: 20 }, (_, i) => rec(T0 + i, 0, `big ${i}`)).join('');
    const good = rec(T0 + 100, 0, 'good');
    const [ing] = await ingests([big, good]);
    const [s] = await stores(1);
    const dir = await tempDir('oklog-quarantine-');
    cleanups.push(dir.cleanup);
    const qdir = join(dir.path, 'quarantine');
    const { c, registry, lines } = consumer(new MutablePeers([ing.addr], [s.addr]), {
      targetAge: 20,
      maxSegmentBytes: 200,
      quarantine: { fs: new RealFileSystem(), dir: qdir },
    });
    c.start();
    await waitFor(() => ing.committed.length === 2, 'the big segment quarantined, the good one stored');
    await c.stop();
    assert.equal(ing.failedCount, 1);
    const files = await readdir(qdir);
    assert.equal(files.length, 1);
    assert.match(files[0], /^127\.0\.0\.1_\d+-\d{4}-\d{2}-\d{2}T\d{9}Z-[0-9a-f]{12}\.segment$/);
    assert.equal(await readFile(join(qdir, files[0]), 'utf8'), big);
    assert.equal(await metric(registry, 'oklog_store_quarantined_segments_total'), 1);
    assert.deepEqual(
      s.received.map((r) => r.body.toString()),
      [good],
    );
    const warn = lines.find((l) => l.code === 'OKLOG_ERR_SEGMENT_TOO_LARGE');
    assert.equal(warn?.bytes, big.length);
  });

  test('without a quarantine folder a poison segment keeps being failed back (never committed)', async () => {
    const [ing] = await ingests(['garbage\n']);
    const [s] = await stores(1);
    const { c } = consumer(new MutablePeers([ing.addr], [s.addr]));
    c.start();
    await waitFor(() => ing.failedCount >= 3, 'failed back repeatedly');
    await c.stop();
    assert.equal(ing.committed.length, 0);
  });

  test('a failed read fails only that claim; the batch goes on', async () => {
    const [ing] = await ingests([rec(T0, 0, 'a'), rec(T0 + 1, 0, 'b')]);
    ing.readFailures.push(500);
    const [s] = await stores(1);
    const { c } = consumer(new MutablePeers([ing.addr], [s.addr]), { targetAge: 100 });
    c.start();
    await waitFor(() => ing.committed.length === 2, 'both committed eventually');
    await c.stop();
    assert.equal(ing.failedCount, 1);
    const all = s.received.flatMap((r) => linesOf(r.body)).map((l) => l.slice(35));
    assert.deepEqual(all.sort(), ['a', 'b']);
  });

  test('stop() fails every outstanding claim (while gathering and while replicating)', async () => {
    const [ing] = await ingests([rec(T0, 0, 'a'), rec(T0 + 1, 0, 'b'), rec(T0 + 2, 0, 'c')]);
    const [s] = await stores(1);
    ing.hangReadsAfter = 2; // the third read stalls: two claims gathered, one being read
    const gathering = consumer(new MutablePeers([ing.addr], [s.addr]), { targetAge: 60_000 });
    gathering.c.start();
    await waitFor(() => ing.pending === 3, 'all claimed');
    await gathering.c.stop();
    ing.hangReadsAfter = Number.POSITIVE_INFINITY;
    assert.equal(ing.failedCount, 3);
    assert.equal(ing.pending, 0);
    assert.equal(ing.committed.length, 0);

    s.hang = true;
    const replicating = consumer(new MutablePeers([ing.addr], [s.addr]), { targetAge: 0 });
    replicating.c.start();
    await waitFor(() => s.requests >= 1, 'replication in flight');
    const t = Date.now();
    await replicating.c.stop();
    assert.ok(Date.now() - t < 3000, 'stop does not wait for the hanging store');
    assert.equal(ing.pending, 0);
    assert.equal(ing.committed.length, 0);
    assert.ok(ing.failedCount >= 4);
  });

  test('a large aggregate is streamed, and a slow answer after the upload is waited for', async () => {
    // Three ~12 MiB segments with interleaved ULIDs, so the merge really interleaves them.
    const payload = 'p'.repeat(100);
    const mk = (lane: number) => {
      const parts: string[] = [];
      for (let i = 0; i < 100_000; i++) parts.push(rec(T0 + i, lane, payload));
      return Buffer.from(parts.join(''));
    };
    const segs = [mk(1), mk(2), mk(3)];
    const total = segs.reduce((n, b) => n + b.length, 0);
    const [ing] = await ingests(segs);
    const [s] = await stores(1);
    s.answerDelayMs = 1500; // longer than the upload idle bound below: the answer wait is separate
    const { c, registry } = consumer(new MutablePeers([ing.addr], [s.addr]), {
      targetAge: 60_000,
      targetSize: 30 * 1024 * 1024,
      http: { uploadIdleTimeoutMs: 500, replicateResponseTimeoutMs: 10_000 },
    });
    c.start();
    await waitFor(() => ing.committed.length === 3, 'large batch committed', 30_000);
    await c.stop();
    assert.equal(s.received.length, 1);
    const r = s.received[0];
    assert.ok(r.chunked && r.contentLength === undefined, 'streamed with chunked encoding');
    assert.ok(r.chunks > 10, `arrived in many pieces (${r.chunks})`);
    assert.equal(r.body.length, total);
    assert.ok(validateRecords(r.body) === 300_000);
    const lines = linesOf(r.body);
    assert.ok(isSortedUnique(lines));
    assert.equal(await metric(registry, 'oklog_store_replicated_bytes', { direction: 'egress' }), total);
  });
});
