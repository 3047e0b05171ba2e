// Live streaming: the registry (bounded per-subscriber queues, slow subscribers dropped), the
// dedupe window, and /store/_stream + /store/stream over real HTTP on in-process servers.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { after, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { Registry } from 'prom-client';
import { buildApiServer } from '../../node/api/index.ts';
import { RealFileSystem } from '../../node/fs/index.ts';
import { compileFilter } from '../../node/store/filter.ts';
import { SegmentPublisher } from '../../node/store/publish.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { receiveSegment } from '../../node/store/replicate.ts';
import { ScanPool } from '../../node/store/scan-pool.ts';
import type { SegmentEntry } from '../../node/store/store-log.ts';
import { createStreamMetrics, SlowSubscriberError, StreamRegistry } from '../../node/store/stream.ts';
import { parseWindow, streamRoutes } from '../../node/store/stream-routes.ts';
import { WindowDeduper } from '../../node/store/window.ts';
import { sleep, tempDir, waitFor } from '../helpers/index.ts';
import { captureLogger, MutablePeers, rec, T0, ulidAt } from './consumer-fakes.ts';
import { silent } from './helpers.ts';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

const all = compileFilter({ q: '', regex: false });

function registryFor(
  over: { bufferBytes?: number; bufferRecords?: number; cpuBurstMs?: number; cpuShare?: number } = {},
) {
  const prom = new Registry();
  const { logger, lines } = captureLogger();
  const reg = new StreamRegistry({ logger, metrics: createStreamMetrics(prom), ...over });
  return { reg, prom, lines };
}

async function metric(registry: Registry, name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return Number(m?.values[0]?.value ?? 0);
}

describe('StreamRegistry', () => {
  test('filters per subscriber and delivers whole records', async () => {
    const { reg } = registryFor();
    const errors = reg.subscribe({ match: compileFilter({ q: 'error', regex: false }) });
    const everything = reg.subscribe({ match: all });
    const topicB = reg.subscribe({ match: compileFilter({ q: '', regex: false, topic: 'b' }) });
    const body = `${rec(T0, 0, 'ok 1')}${rec(T0 + 1, 0, 'error 2')}${ulidAt(T0 + 2)} b error 3\n`;
    const buf = Buffer.from(body);
    await reg.publish(buf);
    buf.fill(0); // publish copied what it keeps
    assert.equal(
      Buffer.concat((await errors.take())!).toString(),
      `${rec(T0 + 1, 0, 'error 2')}${ulidAt(T0 + 2)} b error 3\n`,
    );
    assert.equal(Buffer.concat((await everything.take())!).toString(), body);
    assert.equal(Buffer.concat((await topicB.take())!).toString(), `${ulidAt(T0 + 2)} b error 3\n`);
    assert.equal(reg.size, 3);
    everything.unsubscribe();
    assert.equal(reg.size, 2);
    await reg.close();
    assert.equal(await errors.take(), null, 'a clean end after close');
    assert.throws(() => reg.subscribe({ match: all }), { code: 'OKLOG_ERR_STREAM_CLOSED' });
  });

  test('a subscriber that does not take is dropped; the others keep receiving; publish never waits', async () => {
    const { reg, prom, lines } = registryFor({ bufferBytes: 10_000 });
    const slow = reg.subscribe({ match: all, label: 'slow' });
    const fast = reg.subscribe({ match: all, label: 'fast' });
    let got = 0;
    const reader = (async () => {
      for (;;) {
        const b = await fast.take();
        if (b === null) return;
        got += b.reduce((n, x) => n + x.length, 0);
      }
    })();
    const chunk = Buffer.from(rec(T0, 0, 'x'.repeat(900))); // ~1 KB
    let published = 0;
    for (let i = 0; i < 100; i++) {
      const t = performance.now();
      await reg.publish(chunk);
      assert.ok(performance.now() - t < 50, 'publish does not wait for subscribers');
      published += chunk.length;
      await sleep(0); // the fast reader takes between publishes
    }
    await assert.rejects(slow.take(), SlowSubscriberError);
    assert.ok(slow.closedSignal.aborted);
    assert.equal(await metric(prom, 'oklog_store_stream_dropped_subscribers_total'), 1);
    assert.equal(await metric(prom, 'oklog_store_stream_subscribers'), 1);
    assert.ok(
      lines.some((l) => String(l.msg).includes('dropping slow stream subscriber') && l.who === 'slow'),
    );
    await waitFor(() => got === published, 'fast subscriber got everything');
    await reg.close();
    await reader;
  });

  test('the record bound drops too; a publish larger than the bound still reaches an idle subscriber', async () => {
    const { reg } = registryFor({ bufferRecords: 3 });
    const big = reg.subscribe({ match: all });
    const five = Array.from({ length: 5 }, (_, i) => rec(T0 + i, 9, 'r')).join('');
    await reg.publish(Buffer.from(five));
    assert.equal(Buffer.concat((await big.take())!).toString(), five);
    big.unsubscribe();
    const s = reg.subscribe({ match: all });
    await reg.publish(Buffer.from(rec(T0, 0, 'a') + rec(T0 + 1, 0, 'b')));
    await reg.publish(Buffer.from(rec(T0 + 2, 0, 'c') + rec(T0 + 3, 0, 'd')));
    await assert.rejects(s.take(), { code: 'OKLOG_ERR_SLOW_SUBSCRIBER' });
  });
});

describe('StreamRegistry CPU budget and SegmentPublisher', () => {
  const evil = `(${Array.from({ length: 60 }, (_, i) => `p${i}`).join('|')})*${'(.*)'.repeat(31)}QQQ`;
  const bodyOf = async function* (text: string) {
    yield Buffer.from(text);
  };
  const pBody = (from: number, n: number) =>
    Array.from({ length: n }, (_, i) => rec(T0 + from + i, 0, `${'p'.repeat(150)} ${i}`)).join('');

  test('matching gives the event loop back; a subscriber over its CPU budget is dropped, others served', async () => {
    const { reg, prom, lines } = registryFor({ cpuBurstMs: 200, cpuShare: 0.05 });
    const spec = { q: evil, regex: true };
    const expensive = reg.subscribe({ match: compileFilter(spec), spec, label: 'expensive' });
    const cheap = reg.subscribe({ match: compileFilter({ q: '9', regex: false }), label: 'cheap' });
    // The event loop's longest stall while publishing: a timer that should tick every ms.
    let last = performance.now();
    let worst = 0;
    const tick = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last);
      last = now;
    }, 1);
    const body = pBody(0, 2000);
    const t = performance.now();
    await reg.publish(Buffer.from(body));
    clearInterval(tick);
    assert.ok(worst < 50, `the event loop stalled ${worst.toFixed(0)} ms`);
    assert.ok(performance.now() - t < 5000);
    await assert.rejects(expensive.take(), { code: 'OKLOG_ERR_EXPENSIVE_SUBSCRIBER' });
    assert.equal(await metric(prom, 'oklog_store_stream_cpu_dropped_subscribers_total'), 1);
    assert.equal(await metric(prom, 'oklog_store_stream_dropped_subscribers_total'), 1);
    assert.ok(
      lines.some((l) => String(l.msg).includes('costs more CPU than its budget') && l.who === 'expensive'),
    );
    const got = Buffer.concat((await cheap.take()) ?? []).toString();
    assert.equal(
      got,
      body
        .split('\n')
        .filter((l) => l.slice(27).includes('9'))
        .map((l) => `${l}\n`)
        .join(''),
    );
    await reg.close();
  });

  test('with scan workers, regex subscribers are matched there: in order, charged, dropped over budget', async () => {
    const dir = await tempDir('oklog-publish-');
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    const pool = new ScanPool(silent, 2);
    const { reg, prom } = registryFor({ cpuBurstMs: 300, cpuShare: 0.05 });
    const publisher = new SegmentPublisher(log, reg, silent, { pool });
    try {
      const re = { q: ' [0-9]*7$', regex: true };
      const sevens = reg.subscribe({ match: compileFilter(re), spec: re });
      const bad = { q: evil, regex: true };
      const expensive = reg.subscribe({ match: compileFilter(bad), spec: bad });
      const plain = reg.subscribe({ match: compileFilter({ q: 'p 1', regex: false }) });
      const bodies = [pBody(0, 3000), pBody(10_000, 3000), pBody(20_000, 3000)];
      for (const b of bodies) {
        const r = await receiveSegment(log, bodyOf(b), true);
        publisher.enqueue(r.entry as SegmentEntry);
      }
      await assert.rejects(expensive.take(), { code: 'OKLOG_ERR_EXPENSIVE_SUBSCRIBER' });
      await publisher.drain();
      const all = bodies.join('').split('\n').filter(Boolean);
      const want = (f: (l: string) => boolean) =>
        all
          .filter(f)
          .map((l) => `${l}\n`)
          .join('');
      let got = '';
      while (got.length < want((l) => / [0-9]*7$/.test(l)).length)
        got += Buffer.concat((await sevens.take()) ?? []).toString();
      assert.equal(
        got,
        want((l) => / [0-9]*7$/.test(l)),
        'in segment order, each once',
      );
      let p = '';
      while (p.length < want((l) => l.includes('p 1')).length)
        p += Buffer.concat((await plain.take()) ?? []).toString();
      assert.equal(
        p,
        want((l) => l.includes('p 1')),
      );
      assert.equal(await metric(prom, 'oklog_store_stream_cpu_dropped_subscribers_total'), 1);
      assert.ok(sevens.cpuMs > 0, 'worker time is charged to the subscriber');
      assert.equal(pool.activeScans, 0);
    } finally {
      await reg.close(100);
      await publisher.drain();
      await pool.close();
      await log.close();
      await dir.cleanup();
    }
  });

  test('a publishing backlog beyond its bound is skipped and counted', async () => {
    const dir = await tempDir('oklog-publish-');
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    const { reg, prom } = registryFor();
    const publisher = new SegmentPublisher(log, reg, silent, { maxPending: 1 });
    try {
      const sub = reg.subscribe({ match: all });
      const entries: SegmentEntry[] = [];
      for (let k = 0; k < 3; k++)
        entries.push((await receiveSegment(log, bodyOf(pBody(k * 100, 10)), true)).entry as SegmentEntry);
      for (const e of entries) publisher.enqueue(e); // the first is in progress, the rest over the bound
      await publisher.drain();
      assert.equal(await metric(prom, 'oklog_store_stream_skipped_segments_total'), 2);
      assert.equal(Buffer.concat((await sub.take()) ?? []).toString(), pBody(0, 10));
    } finally {
      await reg.close(100);
      await log.close();
      await dir.cleanup();
    }
  });
});

describe('WindowDeduper', () => {
  const line = (ms: number, n: number, text = 'x') => Buffer.from(rec(ms, n, text));
  const ulids = (b: Buffer | null) =>
    b === null
      ? []
      : b
          .toString()
          .split('\n')
          .filter(Boolean)
          .map((l) => l.slice(0, 26));

  test('holds records for the window and emits them in ULID order', () => {
    const w = new WindowDeduper({ windowMs: 1000 });
    w.add(line(T0 + 5, 0), 0);
    w.add(line(T0 + 1, 0), 100);
    w.add(line(T0 + 3, 0), 200);
    assert.equal(w.drain(500), null, 'nothing due yet');
    // The first arrival is due at 1000: it goes out with every held record below it.
    assert.deepEqual(ulids(w.drain(1000)), [ulidAt(T0 + 1), ulidAt(T0 + 3), ulidAt(T0 + 5)]);
    assert.equal(w.size, 0);
  });

  test('never emits a ULID twice within the window, whoever sends the copy and when', () => {
    const w = new WindowDeduper({ windowMs: 1000 });
    const emitted: string[] = [];
    let now = 0;
    const drain = () => emitted.push(...ulids(w.drain(now)));
    // Node A sends 0..99 at t=0; node B sends the same records at ever later times, the last
    // ones almost a window after A's copies were emitted (t=1000). OK Log's rule (emit what is
    // older than now - window, then forget) emitted every late copy again.
    for (let i = 0; i < 100; i++) w.add(line(T0 + i, 0), now);
    for (let step = 0; step < 20; step++) {
      now += 95;
      for (let i = step * 5; i < step * 5 + 5; i++)
        assert.equal(w.add(line(T0 + i, 0), now), false, `copy ${i}`);
      drain();
    }
    assert.equal(emitted.length, 100);
    assert.equal(new Set(emitted).size, 100);
    assert.deepEqual(emitted, [...emitted].sort());
    assert.equal(w.duplicates, 100);
    // Long after the window a copy is new again (the guarantee is for the window).
    now += 5000;
    w.drain(now);
    assert.equal(w.add(line(T0, 0), now), true);
  });

  test('memory is bounded: held bytes and remembered ULIDs', () => {
    const w = new WindowDeduper({ windowMs: 60_000, maxBufferedBytes: 1000, maxRemembered: 10 });
    for (let i = 0; i < 100; i++) w.add(line(T0 + i, 0), 0);
    const out = ulids(w.drain(1));
    assert.ok(out.length > 0 && w.bytes <= 1000, 'the oldest were emitted early');
    for (let i = 0; i < 100; i++) w.drain(2);
    assert.equal(w.add(line(T0, 0), 3), true, 'forgotten beyond maxRemembered');
  });

  test('parseWindow: Go durations, default 3s, minimum 100ms', () => {
    assert.equal(parseWindow(null), 3000);
    assert.equal(parseWindow('garbage'), 3000);
    assert.equal(parseWindow('1m30s'), 90_000);
    assert.equal(parseWindow('10ms'), 100);
    assert.equal(parseWindow('250ms'), 250);
  });
});

interface Node {
  app: FastifyInstance;
  reg: StreamRegistry;
  prom: Registry;
  addr: string;
}

async function startNode(peers: MutablePeers, bufferBytes?: number): Promise<Node> {
  const prom = new Registry();
  const { logger } = captureLogger('warn');
  const reg = new StreamRegistry({ logger, metrics: createStreamMetrics(prom), bufferBytes });
  const app = await buildApiServer({
    logger,
    registry: prom,
    plugins: [streamRoutes({ registry: reg, peers, logger, peerRefreshMs: 100, retryMs: 100 })],
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as { port: number }).port;
  const node = { app, reg, prom, addr: `127.0.0.1:${port}` };
  cleanups.push(async () => {
    await reg.close(100);
    await app.close();
  });
  return node;
}

/** An open streaming GET: its status, headers, and everything received so far. */
function openStream(url: string) {
  const chunks: Buffer[] = [];
  let ended = false;
  let error: Error | null = null;
  const req = request(url);
  const response = new Promise<{ status: number; type: string }>((resolve, reject) => {
    req.once('error', (e) => {
      error = e;
      reject(e);
    });
    req.once('response', (res) => {
      res.on('data', (d: Buffer) => chunks.push(d));
      res.once('end', () => {
        ended = true;
      });
      res.once('error', (e) => {
        error = e;
      });
      res.once('aborted', () => {
        error = new Error('aborted');
      });
      resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']) });
    });
  });
  req.end();
  return {
    response,
    text: () => Buffer.concat(chunks).toString(),
    lines: () => Buffer.concat(chunks).toString().split('\n').filter(Boolean),
    ended: () => ended,
    error: () => error,
    close: () => req.destroy(),
  };
}

describe('/store/_stream and /store/stream over HTTP', () => {
  test('_stream writes matching replicated records; a client that stops reading is dropped', async () => {
    const peers = new MutablePeers([], []);
    const node = await startNode(peers, 64 * 1024);
    peers.store = [node.addr];
    const fast = openStream(`http://${node.addr}/store/_stream?q=keep`);
    assert.deepEqual(await fast.response, { status: 200, type: 'text/plain; charset=utf-8' });
    // A client that sends its request and never reads a byte.
    const [host, port] = node.addr.split(':');
    const slow = connect(Number(port), host);
    slow.pause();
    let slowClosed = false;
    slow.on('close', () => {
      slowClosed = true;
    });
    slow.on('error', () => {});
    slow.write(`GET /store/_stream HTTP/1.1\r\nHost: ${node.addr}\r\n\r\n`);
    await waitFor(() => node.reg.size === 2, 'two subscribers');

    const big = 'y'.repeat(60_000);
    let expected = '';
    let dropped = 0;
    for (let i = 0; i < 400 && dropped === 0; i++) {
      const keep = rec(T0 + i, 0, `keep ${i}`);
      expected += keep;
      await node.reg.publish(Buffer.from(keep + rec(T0 + i, 1, `drop ${big}`)));
      await sleep(1);
      dropped = await metric(node.prom, 'oklog_store_stream_dropped_subscribers_total');
    }
    assert.equal(dropped, 1, 'the slow subscriber was dropped');
    // Its connection was closed: it sees the end once it reads again.
    slow.resume();
    await waitFor(() => slowClosed, 'slow client disconnected');
    await waitFor(() => fast.text() === expected, 'fast client got every matching record');
    assert.equal(node.reg.size, 1);
    fast.close();
    await waitFor(() => node.reg.size === 0, 'closed client unsubscribed');
  });

  test('invalid parameters are 400 before any stream starts', async () => {
    const node = await startNode(new MutablePeers([], []));
    for (const path of [
      '/store/_stream?q=(&regex=true',
      '/store/stream?q=(&regex=true',
      '/store/stream?topic=a%20b',
    ]) {
      const r = await fetch(`http://${node.addr}${path}`);
      assert.equal(r.status, 400, path);
      await r.text();
    }
  });

  test('/store/stream merges two nodes, emits each record once and in order, and stops upstreams on disconnect', async () => {
    const peers = new MutablePeers([], []);
    const a = await startNode(peers);
    const b = await startNode(peers);
    peers.store = [a.addr, b.addr];
    const user = openStream(`http://${a.addr}/store/stream?q=rec&window=400ms`);
    // Headers come at once, before any record exists.
    assert.deepEqual(await user.response, { status: 200, type: 'text/plain; charset=utf-8' });
    await waitFor(() => a.reg.size === 1 && b.reg.size === 1, 'connected to both nodes');

    // Every record is replicated to both nodes, the copies arriving at different times; both
    // nodes also get records the filter does not want.
    const want: string[] = [];
    for (let batch = 0; batch < 6; batch++) {
      let body = '';
      for (let i = 0; i < 20; i++) {
        const r = rec(T0 + batch * 100 + i, 0, `rec ${batch}.${i}`);
        body += r + rec(T0 + batch * 100 + i, 1, 'other');
        want.push(r.slice(0, -1));
      }
      const buf = Buffer.from(body);
      await (batch % 2 === 0 ? a : b).reg.publish(buf);
      await sleep(60 + batch * 20);
      await (batch % 2 === 0 ? b : a).reg.publish(buf);
    }
    await waitFor(() => user.lines().length >= want.length, 'all records streamed', 10_000);
    await sleep(1000); // > window: any late duplicate would have shown up by now
    assert.deepEqual(user.lines(), want, 'each record once, in ULID order');

    user.close();
    await waitFor(() => a.reg.size === 0 && b.reg.size === 0, 'upstream subscriptions closed');
  });

  test('/store/stream reconnects to a node that failed and picks up new peers', async () => {
    const peers = new MutablePeers([], []);
    const a = await startNode(peers);
    peers.store = [a.addr, '127.0.0.1:1']; // nothing listens on port 1: retried, counted
    const user = openStream(`http://${a.addr}/store/stream?window=100ms`);
    await user.response;
    await waitFor(
      async () => (await metric(a.prom, 'oklog_store_stream_upstream_failures_total')) >= 2,
      'retries',
    );
    const b = await startNode(peers);
    peers.store = [a.addr, b.addr];
    await waitFor(() => b.reg.size === 1, 'new peer connected');
    await b.reg.publish(Buffer.from(rec(T0, 0, 'from b')));
    await waitFor(() => user.lines().length === 1, 'record from the new peer');
    // b's subscriber is dropped from b's side (its registry closes): the stream reconnects.
    await b.reg.close(100);
    assert.equal(user.ended(), false, 'the user stream goes on');
    user.close();
  });
});
