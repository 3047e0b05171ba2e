import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { regexCompilations } from '../../node/store/filter.ts';
import { compileFilterTerms, ScanFilterCache } from '../../node/store/query-params.ts';
import { ScanPool } from '../../node/store/scan-pool.ts';
import { MAX_ULID, ZERO_ULID } from '../../shared/ulid.ts';
import { freePort, tempDir, waitFor } from '../helpers/index.ts';
import { iso, line, query, replicate, silent, startTestNode, T0, type TestNode, ulidAt } from './helpers.ts';

let node: TestNode;

// Segment A: 100 records, one per ms, topics alternating web/db. Segment B overlaps A (replica
// copies of 20..39 plus records of its own), so queries must merge and dedupe. Segment C holds
// four records in one millisecond (T0+500) with non-zero entropy.
before(async () => {
  node = await startTestNode();
  let a = '';
  for (let i = 0; i < 100; i++)
    a += line(T0 + i, 0, `msg ${i} ${i % 10 === 0 ? 'status=500 end' : 'ok'}`, i % 2 === 0 ? 'web' : 'db');
  let b = '';
  for (let i = 20; i < 40; i++) b += line(T0 + i, 0, `replica copy ${i}`, 'db');
  b += line(T0 + 40, 7, 'only in b', 'web');
  let c = '';
  for (let n = 1; n <= 4; n++) c += line(T0 + 500, n * 1000, `same ms ${n}`);
  for (const body of [a, b, c]) assert.equal((await replicate(node.url, body)).status, 200);
});
after(async () => {
  await node?.close();
});

test('relative bounds: now and durations (resolved by the node asked)', async () => {
  const r = await query(node.url, { from: iso(T0), to: 'now' });
  assert.equal(r.status, 200);
  assert.equal(r.lines.length, 105);
  assert.equal((await query(node.url, { from: '5m', to: 'NOW' })).lines.length, 0);
  assert.equal(
    (await query(node.url, { from: '-3000d', to: 'now' }, 'HEAD')).headers.get('x-oklog-records-matched'),
    '105',
  );
});

test('from and to are required and strictly parsed', async () => {
  let r = await query(node.url, { to: iso(T0) });
  assert.equal(r.status, 400);
  assert.equal(r.body, "parsing 'from': : can't parse as ULID or RFC3339 time\n");
  r = await query(node.url, { from: 'yesterday', to: iso(T0) });
  assert.equal(r.status, 400);
  assert.match(r.body, /parsing 'from': yesterday/);
  r = await query(node.url, { from: iso(T0), to: '01HK153X000000000000000000x' });
  assert.equal(r.status, 400);
  // A 26-character RFC 3339 time is a time, not a (lenient) ULID.
  r = await query(node.url, { from: '2024-01-01T00:00:00.00000Z', to: '2024-01-01T00:00:00.00400Z' });
  assert.equal(r.status, 200);
  assert.equal(r.lines.length, 5);
});

test('the to bound includes its whole last millisecond', async () => {
  const r = await query(node.url, { from: iso(T0 + 500), to: iso(T0 + 500) });
  assert.equal(r.status, 200);
  assert.deepEqual(
    r.lines.map((l) => l.split(' ').slice(-1)[0]),
    ['1', '2', '3', '4'],
  );
  // ULID bounds are exact.
  const u = await query(node.url, { from: ulidAt(T0 + 500, 2000), to: ulidAt(T0 + 500, 3000) });
  assert.equal(u.lines.length, 2);
  // Inclusive on both ends; from > to gives nothing.
  assert.equal((await query(node.url, { from: iso(T0 + 10), to: iso(T0 + 19) })).lines.length, 10);
  assert.equal((await query(node.url, { from: iso(T0 + 19), to: iso(T0 + 10) })).lines.length, 0);
});

test('merges overlapping segments: sorted, deduplicated, first copy wins', async () => {
  const r = await query(node.url, { from: iso(T0), to: iso(T0 + 1000) });
  assert.equal(r.lines.length, 100 + 1 + 4);
  const ids = r.lines.map((l) => l.slice(0, 26));
  assert.deepEqual(ids, [...new Set(ids)].sort());
  assert.ok(r.lines.some((l) => l.endsWith('only in b')));
  assert.equal(r.headers.get('x-oklog-segments-queried'), '3');
});

test('regex: $ matches at end of line; regex=false means a plain term; invalid regex is a 400', async () => {
  const all = { from: iso(T0), to: iso(T0 + 1000) };
  let r = await query(node.url, { ...all, q: 'end$', regex: 'true' });
  assert.equal(r.lines.length, 10);
  r = await query(node.url, { ...all, q: 'status=5.0', regex: '' });
  assert.equal(r.lines.length, 10);
  assert.equal(r.headers.get('x-oklog-regex'), 'true');
  r = await query(node.url, { ...all, q: 'status=5.0', regex: 'false' });
  assert.equal(r.lines.length, 0);
  assert.equal(r.headers.get('x-oklog-regex'), 'false');
  r = await query(node.url, { ...all, q: '(a', regex: 'true' });
  assert.equal(r.status, 400);
  assert.match(r.body, /^compiling regex: /);
});

test('a query compiles its regex once on the thread that answers requests (user and node queries)', async () => {
  const plain = await startTestNode({ workers: false });
  try {
    let seg = '';
    for (let i = 0; i < 50; i++) seg += line(T0 + i, 0, `msg ${i} ${i % 10 === 0 ? 'status=500 end' : 'ok'}`);
    assert.equal((await replicate(plain.url, seg)).status, 200);
    const params = { from: iso(T0), to: iso(T0 + 1000), q: 'status=5[0-9]+ end$', regex: 'true' };
    for (const [n, name] of [
      [node, 'scan workers'],
      [plain, 'main thread'],
    ] as const) {
      for (const path of ['/store/query', '/store/_query']) {
        for (const method of ['GET', 'HEAD'] as const) {
          const before = regexCompilations.count;
          const r = await query(n.url, params, method, path);
          assert.equal(r.status, 200);
          if (method === 'GET') assert.ok(r.lines.length >= 5, `${name} ${path}`);
          assert.equal(regexCompilations.count - before, 1, `${name} ${method} ${path}`);
        }
      }
    }
  } finally {
    await plain.close();
  }
});

test('scan workers compile a query’s terms once for all its scans (bounded cache, by terms)', () => {
  let compiled = 0;
  const cache = new ScanFilterCache(2, (p) => {
    compiled++;
    return compileFilterTerms(p);
  });
  const terms = (q: string) => ({ q, regex: true, topic: 'web' });
  const a = cache.get({ ...terms('x+$'), from: ZERO_ULID, to: MAX_ULID });
  const b = cache.get({ ...terms('x+$'), from: ulidAt(T0), to: ulidAt(T0 + 1) });
  assert.equal(compiled, 1, 'same terms, other bounds: compiled once');
  assert.equal(a.matcher, b.matcher);
  assert.equal(b.from.toString(), ulidAt(T0));
  assert.equal(b.to.toString(), ulidAt(T0 + 1));
  assert.equal(a.costly, true);
  assert.equal(a.skipMalformed, true);
  cache.get({ ...terms('x+$'), regex: false, from: ZERO_ULID, to: MAX_ULID });
  assert.equal(compiled, 2, 'a plain term is other terms');
  cache.get({ ...terms('x+$'), from: ZERO_ULID, to: MAX_ULID }); // used again: the most recent
  cache.get({ ...terms('y'), from: ZERO_ULID, to: MAX_ULID }); // evicts the plain term
  assert.equal(cache.size, 2);
  cache.get({ ...terms('x+$'), from: ZERO_ULID, to: MAX_ULID });
  assert.equal(compiled, 3);
  cache.get({ ...terms('x+$'), regex: false, from: ZERO_ULID, to: MAX_ULID });
  assert.equal(compiled, 4);
  assert.throws(() => cache.get({ ...terms('(a'), from: ZERO_ULID, to: MAX_ULID }), /compiling regex/);
  assert.equal(cache.size, 2, 'an invalid pattern is not kept');
});

test('topic filter and limit', async () => {
  const all = { from: iso(T0), to: iso(T0 + 1000) };
  let r = await query(node.url, { ...all, topic: 'web' });
  assert.equal(r.lines.length, 51);
  assert.ok(r.lines.every((l) => l.split(' ')[1] === 'web'));
  r = await query(node.url, { ...all, topic: 'db', q: 'copy' });
  // Filters apply to each stored copy before the merge (as OK Log): real replicas are identical,
  // these test copies are not, so B's copies match where A's do not.
  assert.equal(r.lines.length, 20);
  r = await query(node.url, { ...all, limit: '7' });
  assert.equal(r.lines.length, 7);
  assert.equal(r.lines[0].slice(0, 26), ulidAt(T0));
  r = await query(node.url, { ...all, limit: '0' });
  assert.equal(r.status, 400);
  r = await query(node.url, { ...all, topic: 'bad topic' });
  assert.equal(r.status, 400);
});

test('stats headers, HEAD with records matched, trailer on GET', async () => {
  const params = { from: iso(T0), to: iso(T0 + 99), q: 'status=500' };
  const h = await query(node.url, params, 'HEAD');
  assert.equal(h.status, 200);
  assert.equal(h.body, '');
  assert.equal(h.headers.get('x-oklog-records-matched'), '10');
  assert.equal(h.headers.get('x-oklog-from'), '2024-01-01T00:00:00Z');
  assert.equal(h.headers.get('x-oklog-to'), '2024-01-01T00:00:00Z');
  assert.equal(h.headers.get('x-oklog-q'), 'status=500');
  assert.equal(h.headers.get('x-oklog-regex'), 'false');
  assert.equal(h.headers.get('x-oklog-nodes-queried'), '1');
  assert.equal(h.headers.get('x-oklog-segments-queried'), '2');
  assert.equal(h.headers.get('x-oklog-error-count'), '0');
  assert.ok(Number(h.headers.get('x-oklog-max-data-set-size')) > 4000);
  assert.match(h.headers.get('x-oklog-duration') ?? '', /^[\d.]+(ns|µs|ms|s)$/);
  const limited = await query(node.url, { ...params, limit: '3' }, 'HEAD');
  assert.equal(limited.headers.get('x-oklog-records-matched'), '3');
  // RFC 3339 bounds keep the caller's offset, at second precision.
  const off = await query(node.url, { from: '2024-01-01T01:00:00.5+01:00', to: iso(T0 + 5) }, 'HEAD');
  assert.equal(off.headers.get('x-oklog-from'), '2024-01-01T01:00:00+01:00');
  // GET: the count follows the body as a trailer.
  const trailers = await new Promise<NodeJS.Dict<string>>((resolve, reject) => {
    const req = request(`${node.url}/store/query?${new URLSearchParams(params)}`, (res) => {
      assert.equal(res.headers.trailer, 'X-Oklog-Records-Matched, X-Oklog-Error-Count, X-Oklog-Failed-Nodes');
      res.resume();
      res.on('end', () => resolve(res.trailers));
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(trailers['x-oklog-records-matched'], '10');
});

test('GET /store/ redirects to /store/query; stats endpoint', async () => {
  const r = await fetch(`${node.url}/store/?from=a&to=b`, { redirect: 'manual' });
  assert.equal(r.status, 307);
  assert.equal(r.headers.get('location'), '/store/query?from=a&to=b');
  const s = (await (await fetch(`${node.url}/store/stats`)).json()) as Record<string, unknown>;
  assert.deepEqual(Object.keys(s).sort(), ['newestRecord', 'oldestRecord', 'segments', 'trashed']);
  assert.equal((s.segments as { count: number }).count, 3);
  assert.deepEqual(s.trashed, { count: 0, bytes: 0 });
  assert.equal(s.oldestRecord, iso(T0));
  assert.equal(s.newestRecord, iso(T0 + 500));
});

test('fan-out: replicas deduplicated, a dead peer → 206 naming it, HEAD counts distinct records', async () => {
  const dead = `127.0.0.1:${await freePort()}`;
  let peers: string[] = [];
  const a = await startTestNode({ peers: () => peers });
  const b = await startTestNode({ peers: () => peers });
  try {
    peers = [a.addr, b.addr];
    let both = '';
    for (let i = 0; i < 50; i++) both += line(T0 + i, 0, `r${i}`);
    await replicate(a.url, both);
    await replicate(b.url, both);
    await replicate(a.url, line(T0 + 60, 0, 'only a'));
    await replicate(b.url, line(T0 + 61, 0, 'only b'));
    const params = { from: iso(T0), to: iso(T0 + 100) };
    let r = await query(a.url, params);
    assert.equal(r.status, 200);
    assert.equal(r.lines.length, 52);
    assert.equal(r.headers.get('x-oklog-nodes-queried'), '2');
    assert.equal(r.headers.get('x-oklog-segments-queried'), '4');
    assert.equal(r.headers.get('x-oklog-failed-nodes'), null);
    let h = await query(b.url, params, 'HEAD');
    assert.equal(h.headers.get('x-oklog-records-matched'), '52');
    r = await query(a.url, { ...params, limit: '51' });
    assert.equal(r.lines.length, 51);
    assert.ok(r.lines[50].endsWith('only a'));

    peers = [a.addr, dead, b.addr];
    r = await query(b.url, params);
    assert.equal(r.status, 206);
    assert.equal(r.lines.length, 52);
    assert.equal(r.headers.get('x-oklog-failed-nodes'), dead);
    assert.equal(r.headers.get('x-oklog-error-count'), '1');
    assert.equal(r.headers.get('x-oklog-nodes-queried'), '2');
    h = await query(b.url, params, 'HEAD');
    assert.equal(h.status, 206);
    assert.equal(h.headers.get('x-oklog-records-matched'), '52');

    peers = [];
    r = await query(a.url, params);
    assert.equal(r.status, 503);
    assert.equal(r.body, 'no store nodes available\n');
  } finally {
    await a.close();
    await b.close();
  }
});

test('fan-out: a node failing mid-answer is reported in the trailers', async () => {
  const port = await freePort();
  const liar = createServer((_req, res) => {
    res.writeHead(200, {
      'X-Oklog-Nodes-Queried': '1',
      'X-Oklog-Segments-Queried': '1',
      'X-Oklog-Max-Data-Set-Size': '10',
      'X-Oklog-Error-Count': '0',
    });
    res.write(line(T0 + 1, 5, 'from liar'));
    res.write(line(T0 + 2, 5, 'cut').slice(0, 30));
    setTimeout(() => res.destroy(), 50);
  });
  await new Promise<void>((r) => liar.listen(port, '127.0.0.1', r));
  let peers: string[] = [];
  const a = await startTestNode({ peers: () => peers });
  try {
    peers = [a.addr, `127.0.0.1:${port}`];
    await replicate(a.url, line(T0, 0, 'a0') + line(T0 + 3, 0, 'a3'));
    const { body, trailers, status } = await new Promise<{
      body: string;
      trailers: NodeJS.Dict<string>;
      status: number;
    }>((resolve, reject) => {
      const req = request(`${a.url}/store/query?from=${iso(T0)}&to=${iso(T0 + 10)}`, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d) => {
          text += d;
        });
        res.on('end', () => resolve({ body: text, trailers: res.trailers, status: res.statusCode ?? 0 }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(status, 200);
    assert.equal(body, line(T0, 0, 'a0') + line(T0 + 1, 5, 'from liar') + line(T0 + 3, 0, 'a3'));
    assert.equal(trailers['x-oklog-failed-nodes'], `127.0.0.1:${port}`);
    assert.equal(trailers['x-oklog-error-count'], '1');
    assert.equal(trailers['x-oklog-records-matched'], '3');
  } finally {
    await a.close();
    await new Promise((r) => liar.close(r));
  }
});

// The ReDoS test proper runs against a real node process (redos.test.ts). Here: the pool's
// last resort, when a single record is too slow for its regex to end any time slice.
test('a record that stalls a worker stops only its own scan; the other scans there resume, complete', async () => {
  const dir = await tempDir('oklog-stall-');
  const pool = new ScanPool(silent, 1, { stallMs: 300 });
  try {
    // A: one 1 MiB record; under this pattern (at the caps) it takes seconds to match.
    const huge = join(dir.path, 'huge');
    await writeFile(huge, line(T0, 0, 'p'.repeat(1 << 20)));
    // B: ordinary records, scanned by a cheap regex and counted by a count-only scan on the
    // same (only) worker while A stalls it.
    const lines: string[] = [];
    for (let i = 0; i < 60_000; i++)
      lines.push(line(T0 + i, 0, `${'x'.repeat(i % 90)} ${i % 7 === 0 ? 'hit' : 'no'} ${i}`));
    const plain = join(dir.path, 'plain');
    await writeFile(plain, lines.join(''));
    const want = lines.filter((l) => / hit \d+\n$/.test(l)).join('');
    const job = (path: string, q: string) => ({
      path: () => path,
      params: { q, regex: true, topic: undefined, from: ZERO_ULID, to: MAX_ULID },
      low: ZERO_ULID,
      high: MAX_ULID,
      chunk: 64 << 10,
      budget: 64 << 10,
    });
    const evil = `(${Array.from({ length: 60 }, (_, i) => `p${i}`).join('|')})*${'(.*)'.repeat(31)}QQQ`;
    const collect = async (it: AsyncIterable<Buffer>) => {
      const out: Buffer[] = [];
      for await (const c of it) out.push(c);
      return Buffer.concat(out).toString();
    };
    // Slow enough (tens of microseconds a record) to be mid-file when A stalls the worker.
    const cheap = `${'(.*)'.repeat(6)} hit [0-9]+$`;
    const b = collect(pool.scan(job(plain, cheap)));
    const counted = pool.countScan(job(plain, cheap));
    const c = (async () => {
      while (!(await counted.next()).done) {}
      return counted.count;
    })();
    const a = collect(pool.scan(job(huge, evil)));
    await assert.rejects(a, { code: 'OKLOG_ERR_SCAN_STALLED' });
    assert.equal(pool.stalls, 1);
    assert.equal(pool.resumed, 2, 'B and C went on on a fresh worker');
    assert.equal(await b, want, 'every match once, in order, across the restart');
    assert.equal(await c, want.split('\n').length - 1);
    assert.equal(pool.activeScans, 0);
  } finally {
    await pool.close();
    await dir.cleanup();
  }
});

test('a client gone from a scan that finds nothing stops it at once (CPU, segments)', async () => {
  const n = await startTestNode();
  try {
    const parts: string[] = [];
    for (let i = 0; i < 20_000; i++) parts.push(line(T0 + i, 0, `${'p'.repeat(150)} ${i}`));
    await replicate(n.url, parts.join(''));
    await replicate(n.url, parts.slice(0, 100).join('')); // overlapping: a merged batch too
    const held = () => n.log.list(['flushed']).reduce((a, e) => a + e.refs, 0);
    const evil = `(${Array.from({ length: 60 }, (_, i) => `p${i}`).join('|')})*${'(.*)'.repeat(31)}QQQ`;
    for (const method of ['GET', 'HEAD']) {
      const req = request(
        `${n.url}/store/query?from=${iso(T0)}&to=${iso(T0 + 100_000)}&regex&q=${encodeURIComponent(evil)}`,
        { method },
      );
      req.on('error', () => {});
      req.end();
      await waitFor(() => held() > 0, 'query running');
      await new Promise((r) => setTimeout(r, 300));
      req.destroy();
      await waitFor(() => held() === 0, 'segments released after disconnect', 1000, 10);
      const c0 = process.cpuUsage();
      await new Promise((r) => setTimeout(r, 400));
      const c = process.cpuUsage(c0);
      assert.ok(
        c.user + c.system < 150_000,
        `${method}: ${(c.user + c.system) / 1000} ms of CPU in 400 ms after the disconnect`,
      );
    }
  } finally {
    await n.close();
  }
});

test('HEAD across nodes counts distinct records from their ULIDs only', async () => {
  let peers: string[] = [];
  const a = await startTestNode({ peers: () => peers });
  const b = await startTestNode({ peers: () => peers });
  // b is reached through a proxy that counts the bytes b sends back.
  let fromB = 0;
  const proxy = createNetServer((client) => {
    const [host, port] = b.addr.split(':');
    const up = connect(Number(port), host);
    client.pipe(up);
    up.on('data', (d: Buffer) => {
      fromB += d.length;
    });
    up.pipe(client);
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const proxied = `127.0.0.1:${(proxy.address() as { port: number }).port}`;
  try {
    peers = [a.addr, proxied];
    let both = '';
    for (let i = 0; i < 2000; i++) both += line(T0 + i, 0, `${'r'.repeat(100)} ${i}`);
    await replicate(a.url, both);
    await replicate(b.url, both);
    await replicate(b.url, line(T0 + 5000, 0, `${'r'.repeat(100)} only b`));
    const params = { from: iso(T0), to: iso(T0 + 10_000), q: 'rrr' };
    const h = await query(a.url, params, 'HEAD');
    assert.equal(h.status, 200);
    assert.equal(h.headers.get('x-oklog-records-matched'), '2001');
    assert.equal(h.headers.get('x-oklog-nodes-queried'), '2');
    assert.ok(fromB < 2001 * 27 + 4096, `b sent ${fromB} bytes for 2001 matches`);
    fromB = 0;
    assert.equal(
      (await query(a.url, { ...params, limit: '1500' }, 'HEAD')).headers.get('x-oklog-records-matched'),
      '1500',
    );
    assert.equal((await query(a.url, params)).lines.length, 2001, 'GET agrees');
    // ulids is internal to _query: a user asking /store/query for it gets records, not ULIDs.
    const own = await query(a.url, { ...params, ulids: 'true' });
    assert.equal(own.status, 200);
    assert.equal(own.lines.length, 2001);
    assert.ok(
      own.lines.every((l) => l.includes(' rrr')),
      'every line is a record',
    );
    assert.equal(
      (await query(a.url, { ...params, ulids: 'true' }, 'HEAD')).headers.get('x-oklog-records-matched'),
      '2001',
    );
    // The internal mode itself: a ULID and a newline per matching record, merged within a node.
    const u = await query(b.url, { ...params, ulids: 'true' }, 'GET', '/store/_query');
    assert.deepEqual(u.lines, [...Array.from({ length: 2000 }, (_, i) => ulidAt(T0 + i)), ulidAt(T0 + 5000)]);
  } finally {
    await a.close();
    await b.close();
    await new Promise((r) => proxy.close(r));
  }
});

test('lines that are not records are skipped and counted, not fatal to the answer', async () => {
  const good = [0, 1, 2, 3, 4, 5].map((i) => line(T0 + i, 0, `good ${i}`));
  // A short line, a line whose ULID is not one, an empty line: between good records.
  const body = [
    good[0],
    'short\n',
    good[1],
    `${'#'.repeat(26)} default good not a record\n`,
    good[2],
    '\n',
    good[3],
  ].join('');
  const dirs = [await tempDir('oklog-malformed-'), await tempDir('oklog-malformed-')];
  for (const d of dirs) {
    await writeFile(join(d.path, `${ulidAt(T0)}-${ulidAt(T0 + 3)}.flushed`), body);
    // An overlapping segment: the two are merged.
    await writeFile(
      join(d.path, `${ulidAt(T0 + 3)}-${ulidAt(T0 + 5)}.flushed`),
      `${good[3]}${good[4]}x\n${good[5]}`,
    );
  }
  const n = await startTestNode({ root: dirs[0].path });
  const plain = await startTestNode({ root: dirs[1].path, workers: false });
  try {
    const all = { from: iso(T0), to: iso(T0 + 10) };
    for (const node of [n, plain]) {
      let r = await query(node.url, all);
      assert.equal(r.status, 200);
      assert.deepEqual(
        r.lines,
        good.map((l) => l.trimEnd()),
      );
      r = await query(node.url, { ...all, q: 'good' });
      assert.deepEqual(
        r.lines,
        good.map((l) => l.trimEnd()),
      );
      r = await query(node.url, { ...all, q: 'good [0-9]$', regex: 'true' });
      assert.deepEqual(
        r.lines,
        good.map((l) => l.trimEnd()),
      );
      r = await query(node.url, { from: iso(T0 + 1), to: iso(T0 + 2), q: 'good' });
      assert.deepEqual(
        r.lines,
        good.slice(1, 3).map((l) => l.trimEnd()),
        'a stray line does not end a bounded scan',
      );
      assert.equal(
        (await query(node.url, { ...all, q: 'good' }, 'HEAD')).headers.get('x-oklog-records-matched'),
        '6',
      );
    }
    const m = (await n.registry.getMetricsAsJSON()).find(
      (x) => x.name === 'oklog_store_query_malformed_lines_total',
    );
    assert.ok(Number(m?.values[0]?.value) > 0);
    // The query had the segments repaired: the stray lines are set aside in .bad files, the
    // segments left hold only records, and the answer is the same.
    for (const [i, d] of dirs.entries()) {
      await waitFor(
        async () => (await readdir(d.path)).filter((x) => x.endsWith('.bad')).length === 2,
        `node ${i}: both segments repaired`,
      );
      const files = await readdir(d.path);
      const stray = (
        await Promise.all(
          files.filter((x) => x.endsWith('.bad')).map((x) => readFile(join(d.path, x), 'utf8')),
        )
      ).join('');
      assert.deepEqual(stray.split('\n').filter(Boolean).sort(), [
        '#'.repeat(26) + ' default good not a record',
        'short',
        'x',
      ]);
      let kept = '';
      for (const x of files.filter((f) => f.endsWith('.flushed')))
        kept += await readFile(join(d.path, x), 'utf8');
      // Both segments hold "good 3" (they overlap there); compaction merges them later.
      assert.deepEqual(
        [...new Set(kept.split('\n').filter(Boolean))].sort(),
        good.map((l) => l.trimEnd()),
      );
    }
    for (const node of [n, plain]) {
      const r = await query(node.url, { from: iso(T0), to: iso(T0 + 10) });
      assert.deepEqual(
        r.lines,
        good.map((l) => l.trimEnd()),
      );
    }
  } finally {
    await n.close();
    await plain.close();
    for (const d of dirs) await d.cleanup();
  }
});

test('a last line without a newline is skipped and counted, and its segment repaired (workers and main thread)', async () => {
  const good = [0, 1, 2].map((i) => line(T0 + i, 0, `good ${i}`));
  const torn = line(T0 + 3, 0, 'good torn').trimEnd();
  const dirs = [await tempDir('oklog-torn-'), await tempDir('oklog-torn-')];
  for (const d of dirs)
    await writeFile(join(d.path, `${ulidAt(T0)}-${ulidAt(T0 + 3)}.flushed`), good.join('') + torn);
  const nodes = [
    await startTestNode({ root: dirs[0].path }),
    await startTestNode({ root: dirs[1].path, workers: false }),
  ];
  try {
    for (const [i, n] of nodes.entries()) {
      const r = await query(n.url, { from: iso(T0), to: iso(T0 + 10), q: 'good', regex: 'true' });
      assert.deepEqual(
        r.lines,
        good.map((l) => l.trimEnd()),
      );
      const m = (await n.registry.getMetricsAsJSON()).find(
        (x) => x.name === 'oklog_store_query_malformed_lines_total',
      );
      assert.equal(Number(m?.values[0]?.value), 1, `node ${i}`);
      // Repaired: the torn line set aside (compaction used to drop it unseen), the records kept.
      const torn0 = `${ulidAt(T0)}-${ulidAt(T0 + 3)}.flushed`;
      const bad = await waitFor(async () => {
        const files = await readdir(dirs[i].path);
        return files.includes(torn0) ? undefined : files.find((x) => x.endsWith('.bad'));
      }, `node ${i}: segment repaired`);
      assert.equal(await readFile(join(dirs[i].path, bad as string), 'utf8'), `${torn}\n`);
      assert.deepEqual(
        (await query(n.url, { from: iso(T0), to: iso(T0 + 10) })).lines,
        good.map((l) => l.trimEnd()),
      );
    }
  } finally {
    for (const n of nodes) await n.close();
    for (const d of dirs) await d.cleanup();
  }
});

test('a query selects nothing beyond the largest ULID and survives an empty store', async () => {
  const n = await startTestNode();
  try {
    const r = await query(n.url, { from: iso(0), to: MAX_ULID });
    assert.equal(r.status, 200);
    assert.equal(r.body, '');
    assert.equal(r.headers.get('x-oklog-segments-queried'), '0');
  } finally {
    await n.close();
  }
});

test('scan workers, byte-range splits and the main-thread scan return the same records', async () => {
  const split = await startTestNode({ splitBytes: 4096 });
  const plain = await startTestNode({ workers: false });
  try {
    let body = '';
    for (let i = 0; i < 3000; i++)
      body += line(
        T0 + i,
        0,
        `${'x'.repeat(i % 113)} ${i % 7 === 0 ? 'needle' : 'hay'} ${i}`,
        i % 3 ? 'a' : 'b',
      );
    for (const n of [split, plain]) {
      assert.equal((await replicate(n.url, body)).status, 200);
      assert.equal((await replicate(n.url, line(T0 + 5000, 0, 'later needle'))).status, 200);
    }
    const cases: Record<string, string>[] = [
      { from: iso(T0), to: iso(T0 + 9999) },
      { from: iso(T0), to: iso(T0 + 9999), q: 'needle' },
      { from: iso(T0 + 100), to: iso(T0 + 2500), q: 'needle' },
      { from: iso(T0 + 100), to: iso(T0 + 2500), q: 'xxxxxxxxxx+ needle', regex: 'true' },
      { from: iso(T0), to: iso(T0 + 9999), topic: 'b', q: 'hay' },
      { from: iso(T0), to: iso(T0 + 9999), q: 'needle', limit: '100' },
    ];
    for (const c of cases) {
      const a = await query(split.url, c);
      const b = await query(plain.url, c);
      assert.equal(a.status, 200);
      assert.ok(a.lines.length > 0, JSON.stringify(c));
      assert.equal(a.body, b.body, JSON.stringify(c));
      // The per-node endpoint over HTTP (what other nodes' fan-outs call) answers the same.
      assert.equal((await query(split.url, c, 'GET', '/store/_query')).body, a.body);
      // HEAD counts (in the workers, per range, or from known segment counts) agree.
      for (const n of [split, plain]) {
        for (const path of ['/store/query', '/store/_query']) {
          const h = await query(n.url, c, 'HEAD', path);
          assert.equal(h.headers.get('x-oklog-records-matched'), String(a.lines.length), JSON.stringify(c));
        }
      }
    }
  } finally {
    await split.close();
    await plain.close();
  }
});

test('a client that goes away stops the work; HEAD leaves no reader behind', async () => {
  const n = await startTestNode();
  try {
    const parts: string[] = [];
    for (let i = 0; i < 60_000; i++) parts.push(line(T0 + i, 0, `${'w'.repeat(150)} ${i}`));
    await replicate(n.url, parts.join(''));
    await replicate(n.url, parts.slice(0, 1000).join('')); // an overlapping copy: merged batch
    const held = () => n.log.list(['flushed']).reduce((a, e) => a + e.refs, 0);
    const params = `from=${iso(T0)}&to=${iso(T0 + 100_000)}`;
    for (const q of ['', '&q=w']) {
      await new Promise<void>((resolve, reject) => {
        const req = request(`${n.url}/store/query?${params}${q}`, (res) => {
          res.once('data', () => {
            req.destroy(); // gone after the first chunk of a ~10 MiB answer
            resolve();
          });
        });
        req.on('error', () => {});
        req.on('close', () => resolve());
        setTimeout(() => reject(new Error('no data')), 5000).unref();
        req.end();
      });
      await waitFor(() => held() === 0, 'segments released after disconnect', 5000);
    }
    const h = await query(n.url, { from: iso(T0), to: iso(T0 + 100_000), q: 'w' }, 'HEAD');
    assert.equal(h.headers.get('x-oklog-records-matched'), '60000');
    assert.equal(held(), 0);
  } finally {
    await n.close();
  }
});

test('queries work on the virtual filesystem too (no scan workers)', async () => {
  const { VirtualFileSystem } = await import('../../node/fs/index.ts');
  const n = await startTestNode({ fs: new VirtualFileSystem() });
  try {
    await replicate(n.url, line(T0, 0, 'a x') + line(T0 + 2, 0, 'b'));
    await replicate(n.url, line(T0 + 1, 0, 'c x') + line(T0 + 2, 0, 'b dup'));
    const r = await query(n.url, { from: iso(T0), to: iso(T0 + 10), q: 'x' });
    assert.deepEqual(r.lines, [line(T0, 0, 'a x').trimEnd(), line(T0 + 1, 0, 'c x').trimEnd()]);
    const all = await query(n.url, { from: iso(T0), to: iso(T0 + 10) });
    assert.equal(all.lines.length, 3);
  } finally {
    await n.close();
  }
});
