// One real `oklog ingest` process (static topics), driven over real sockets: TCP framing rules,
// the segment API's statuses and bodies, acked HTTP writes, bulk uploads, the pending timeout,
// 200 concurrent connections and the metrics.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { sleep, startOklog, tempDir, waitFor } from '../helpers/index.ts';
import {
  bulkUpload,
  drain,
  metricValue,
  openConnection,
  parseRecord,
  sendLines,
  sendThenReset,
  splitRecords,
  stats,
  waitFlushed,
  waitWritten,
} from './util.ts';

let node: Awaited<ReturnType<typeof startOklog>>;
let api = '';
let cleanup: () => Promise<void>;
/** Records written so far by the tests (stats are cumulative). */
let written = 0;

before(async () => {
  const dir = await tempDir();
  cleanup = dir.cleanup;
  node = await startOklog('ingest', [
    '-ingest.path',
    dir.path,
    '-ingest.segment-flush-age',
    '150ms',
    '-ingest.segment-pending-timeout',
    '1s',
    '-ingest.max-record-size',
    '1000',
    '-ingest.max-write-body',
    '65536',
    '-topic',
    'tenant-a',
  ]);
  api = node.api;
});

after(async () => {
  await node?.proc.kill('SIGKILL');
  await cleanup?.();
});

/** Sends, waits for the records to be flushed, drains them; returns payloads (ULIDs checked). */
async function roundTrip(send: () => Promise<void>, expected: number): Promise<string[]> {
  await send();
  written += expected;
  await waitFlushed(api, written);
  const got = await drain(api);
  assert.equal(got.length, expected, JSON.stringify(got.slice(0, 5)));
  return got.map((r) => parseRecord(r)[1]);
}

test('nothing flushed: /ingest/next is a 404 with Go’s body', async () => {
  const r = await fetch(`${api}/ingest/next`);
  assert.equal(r.status, 404);
  assert.equal(await r.text(), '404 page not found\n');
});

test('fast: static topic prefix, CRLF and empty lines kept, final line at clean EOF kept', async () => {
  const got = await roundTrip(() => sendLines(node.ports.fast, 'one\r\n\ntwo\nlast'), 4);
  assert.deepEqual(got, ['tenant-a one\r', 'tenant-a ', 'tenant-a two', 'tenant-a last']);
});

test('fast and durable: a line cut by a reset is dropped, the complete ones before it are kept', async () => {
  for (const port of [node.ports.fast, node.ports.durable]) {
    const got = await roundTrip(() => sendThenReset(port, 'a\nb\ncut-off'), 2);
    assert.deepEqual(got, ['tenant-a a', 'tenant-a b']);
  }
  const m = await (await fetch(`${api}/metrics`)).text();
  assert.ok(metricValue(m, 'oklog_ingest_records_dropped_total{reason="truncated"}') >= 2);
});

test('fast and durable: after a client EOF the node closes its side only once it wrote the records', async () => {
  // `oklog forward` exits 0 on this FIN: it must mean "read and written", not just "EOF seen".
  for (const port of [node.ports.fast, node.ports.durable]) {
    const before = (await stats(api)).written.records;
    const lines = Array.from({ length: 40_000 }, (_, i) => `eof-${i} ${'p'.repeat(40)}\n`).join('');
    await sendLines(port, lines); // resolves when the node has closed its side
    const s = await stats(api);
    assert.equal(s.written.records - before, 40_000, 'every record written before the node closed');
    written += 40_000;
  }
  await waitFlushed(api, written);
  assert.equal((await drain(api)).length, 80_000);
});

test('oversized lines are dropped and counted; the connection carries on at the next newline', async () => {
  const big = 'x'.repeat(5000);
  const got = await roundTrip(
    () => sendLines(node.ports.fast, `before\n${big}\nafter\n${'y'.repeat(1000)}\n${big}`),
    3,
  );
  assert.deepEqual(got, ['tenant-a before', 'tenant-a after', `tenant-a ${'y'.repeat(1000)}`]);
  const m = await (await fetch(`${api}/metrics`)).text();
  assert.equal(metricValue(m, 'oklog_ingest_records_dropped_total{reason="too_large"}'), 2);
});

test('200 concurrent connections: every record once, each connection in order with increasing ULIDs', async () => {
  const conns = 200;
  const per = 50;
  const sent = Array.from({ length: conns }, (_, c) =>
    Array.from({ length: per }, (_, i) => `conn=${c} seq=${i}`).join('\n'),
  );
  const sockets = await Promise.all(sent.map(() => openConnection(node.ports.fast)));
  await waitFor(async () => (await stats(api)).connections.fast === conns, '200 connections');
  await Promise.all(
    sockets.map(
      (s, c) =>
        new Promise<void>((resolve) => {
          s.once('close', () => resolve());
          s.end(`${sent[c]}\n`);
        }),
    ),
  );
  written += conns * per;
  await waitFlushed(api, written);
  const records = await drain(api);
  assert.equal(records.length, conns * per);
  const ulids = new Set<string>();
  const last = new Map<number, { seq: number; ulid: string }>();
  for (const r of records) {
    const [ulid, rest] = parseRecord(r);
    ulids.add(ulid);
    const m = /^tenant-a conn=(\d+) seq=(\d+)$/.exec(rest);
    assert.ok(m, rest);
    const c = Number(m[1]);
    const seq = Number(m[2]);
    const prev = last.get(c);
    if (prev) {
      assert.equal(seq, prev.seq + 1, `connection ${c} in order`);
      assert.ok(ulid > prev.ulid);
    } else assert.equal(seq, 0);
    last.set(c, { seq, ulid });
  }
  assert.equal(ulids.size, conns * per, 'ULIDs unique');
  assert.equal((await stats(api)).connections.fast, 0);
});

test('segment API: 428 before read, 500 on a second read, 404 unknown, 400 malformed ids', async () => {
  await sendLines(node.ports.durable, 'api-test\n');
  written += 1;
  await waitFlushed(api, written);
  const id = await (await fetch(`${api}/ingest/next`)).text();
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);

  let r = await fetch(`${api}/ingest/commit?id=${id}`, { method: 'POST' });
  assert.equal(r.status, 428);
  assert.equal(await r.text(), "segment hasn't been read yet; can't commit\n");
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain; charset=utf-8/);

  const state = await (await fetch(`${api}/ingest/_segmentstate`)).text();
  assert.match(
    state,
    new RegExp(
      `^1 pending\\n ${id}: reading=false deadline=\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d(\\.\\d+)? \\+0000 UTC\\n$`,
    ),
  );

  r = await fetch(`${api}/ingest/read?id=${id}`);
  assert.equal(r.status, 200);
  assert.deepEqual(
    splitRecords(await r.text()).map((l) => parseRecord(l)[1]),
    ['tenant-a api-test'],
  );
  r = await fetch(`${api}/ingest/read?id=${id}`);
  assert.equal(r.status, 500);
  assert.equal(await r.text(), 'another client is already reading this segment\n');

  for (const bad of ['..%2F..%2Fetc%2Fpasswd', '../x', 'a/b', '..', 'not-a-uuid', `${id}x`, `${id}%00`]) {
    for (const [method, path] of [
      ['GET', 'read'],
      ['POST', 'commit'],
      ['POST', 'failed'],
    ]) {
      r = await fetch(`${api}/ingest/${path}?id=${bad}`, { method });
      assert.equal(r.status, 400, `${method} ${path} ${bad}`);
      await r.text();
    }
  }
  r = await fetch(`${api}/ingest/read`);
  assert.equal(r.status, 400);
  await r.text();
  r = await fetch(`${api}/ingest/commit?id=00000000-0000-4000-8000-000000000000`, { method: 'POST' });
  assert.equal(r.status, 404);
  assert.equal(await r.text(), '404 page not found\n');
  r = await fetch(`${api}/ingest/next`, { method: 'POST' });
  assert.equal(r.status, 404, 'wrong method');
  await r.text();

  r = await fetch(`${api}/ingest/failed?id=${id}`, { method: 'POST' });
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'Failed OK');
  assert.deepEqual(
    (await drain(api)).map((l) => parseRecord(l)[1]),
    ['tenant-a api-test'],
    'failed back, offered again',
  );
});

test('pending timeout (-ingest.segment-pending-timeout 1s) fails an abandoned claim back', async () => {
  await sendLines(node.ports.fast, 'abandoned\n');
  written += 1;
  await waitFlushed(api, written);
  const id = await (await fetch(`${api}/ingest/next`)).text();
  await (await fetch(`${api}/ingest/read?id=${id}`)).text();
  assert.equal((await stats(api)).segments.pending.count, 1);
  await waitFor(async () => (await stats(api)).segments.flushed.count === 1, 'claim timed out', 5000);
  const r = await fetch(`${api}/ingest/commit?id=${id}`, { method: 'POST' });
  assert.equal(r.status, 404, 'the expired claim is gone');
  await r.text();
  assert.equal((await drain(api)).length, 1);
});

test('stats, _clusterstate: shapes others code against', async () => {
  const s = await stats(api);
  assert.deepEqual(Object.keys(s), ['segments', 'connections', 'written']);
  assert.deepEqual(Object.keys(s.segments), ['active', 'flushed', 'pending']);
  assert.deepEqual(Object.keys(s.connections), ['fast', 'durable', 'bulk']);
  assert.equal(s.written.records, written);
  assert.ok(s.written.bytes > 0);
  const r = await fetch(`${api}/ingest/_clusterstate`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'application/json; charset=utf-8');
  const body = await r.text();
  JSON.parse(body);
  assert.match(body, /^\{\n {4}"/, 'indented 4 spaces');
});

test('acked write: 200 {records, bytes} after fsync; 400 bad topic; 413 over the limits', async () => {
  let r = await fetch(`${api}/ingest/write?topic=acked`, { method: 'POST', body: 'w1\nw2\r\nw3' });
  assert.equal(r.status, 200);
  const res = (await r.json()) as { records: number; bytes: number };
  assert.equal(res.records, 3);
  assert.equal(res.bytes, 3 * (27 + 6 + 1) + 'w1w2\rw3'.length, 'bytes as stored');
  r = await fetch(`${api}/ingest/write`, { method: 'POST', body: 'default-topic\n' });
  assert.deepEqual(await r.json(), { records: 1, bytes: 27 + 9 + 14 });
  written += 4;
  await waitFlushed(api, written);
  const got = (await drain(api)).map((l) => parseRecord(l)[1]).sort();
  assert.deepEqual(got, ['acked w1', 'acked w2\r', 'acked w3', 'tenant-a default-topic']);

  r = await fetch(`${api}/ingest/write?topic=bad%20topic`, { method: 'POST', body: 'x\n' });
  assert.equal(r.status, 400);
  assert.match(await r.text(), /topic name "bad topic" invalid/);
  r = await fetch(`${api}/ingest/write`, { method: 'POST', body: 'x'.repeat(70_000) });
  assert.equal(r.status, 413);
  await r.text();
  r = await fetch(`${api}/ingest/write`, { method: 'POST', body: `ok\n${'z'.repeat(1001)}\n` });
  assert.equal(r.status, 413, 'a record over -ingest.max-record-size refuses the whole body');
  await r.text();
  // Chunked body (no content-length) that grows past the limit.
  const big = new ReadableStream({
    start(c) {
      for (let i = 0; i < 20; i++) c.enqueue(new TextEncoder().encode(`${'q'.repeat(999)}\n`.repeat(4)));
      c.close();
    },
  });
  // The server may answer 413 and close while the client is still sending; undici then reports
  // the reset instead of the status. Either way the body is refused (checked by stats below).
  try {
    r = await fetch(`${api}/ingest/write`, { method: 'POST', body: big, duplex: 'half' } as RequestInit);
    assert.equal(r.status, 413);
    await r.text();
  } catch (err) {
    assert.equal((err as Error).message, 'fetch failed', String(err));
  }
  r = await fetch(`${api}/ingest/write`, { method: 'POST', body: '' });
  assert.deepEqual(await r.json(), { records: 0, bytes: 0 });
  await sleep(300);
  assert.equal((await stats(api)).written.records, written, 'refused bodies stored nothing');
});

test('bulk: OK <records> only after a store commits the segment; ERR on an oversized line', async () => {
  const up = await bulkUpload(node.ports.bulk, 'b1\nb2\nb3');
  written += 3;
  await waitFor(async () => (await stats(api)).segments.flushed.count === 1, 'bulk segment flushed');
  await sleep(200);
  assert.equal(up.reply, '', 'no answer before the commit');
  const id = await (await fetch(`${api}/ingest/next`)).text();
  const body = await (await fetch(`${api}/ingest/read?id=${id}`)).text();
  assert.deepEqual(
    splitRecords(body).map((l) => parseRecord(l)[1]),
    ['tenant-a b1', 'tenant-a b2', 'tenant-a b3'],
    'the upload is exactly one segment',
  );
  assert.equal(up.reply, '');
  await (await fetch(`${api}/ingest/commit?id=${id}`, { method: 'POST' })).text();
  assert.equal(await up.replied, 'OK 3\n');

  const bad = await bulkUpload(node.ports.bulk, `fine\n${'x'.repeat(2000)}\nmore\n`);
  assert.equal(await bad.replied, 'ERR line too long\n');
  const empty = await bulkUpload(node.ports.bulk, '');
  assert.equal(await empty.replied, 'OK 0\n');
  await sleep(200);
  const s = await stats(api);
  assert.equal(s.segments.flushed.count + s.segments.active.count, 0, 'refused upload left no segment');
  assert.equal(s.connections.bulk, 0);
});

test('/metrics: every ingest metric present with non-zero values after traffic', async () => {
  // A durable write (syncs), a size-free age flush, a commit and a failure have happened above.
  const m = await (await fetch(`${api}/metrics`)).text();
  for (const sample of [
    'oklog_ingest_writer_bytes_written_total',
    'oklog_ingest_writer_records_written_total',
    'oklog_ingest_writer_syncs_total',
    'oklog_ingest_writer_flushes_total{reason="age"}',
    'oklog_ingest_writer_flushes_total{reason="close"}',
    'oklog_ingest_segment_flush_age_seconds_count',
    'oklog_ingest_segment_flush_size_bytes_count',
    'oklog_ingest_failed_segments',
    'oklog_ingest_committed_segments',
    'oklog_ingest_committed_bytes',
    'oklog_ingest_records_dropped_total{reason="too_large"}',
    'oklog_ingest_bulk_results_total{result="ok"}',
    'oklog_ingest_acked_writes_total{code="200"}',
  ]) {
    assert.ok(metricValue(m, sample) > 0, `${sample} > 0`);
  }
  assert.match(m, /oklog_ingest_segment_flush_size_bytes_bucket\{le="16384"\}/);
  assert.match(m, /oklog_ingest_segment_flush_size_bytes_bucket\{le="16777216"\}/);
  for (const modality of ['fast', 'durable', 'bulk'])
    assert.equal(metricValue(m, `oklog_connected_clients{modality="${modality}"}`), 0);
  // The gauge moves while a client is connected, bulk included.
  const s = await openConnection(node.ports.bulk);
  await waitFor(
    async () =>
      metricValue(
        await (await fetch(`${api}/metrics`)).text(),
        'oklog_connected_clients{modality="bulk"}',
      ) === 1,
    'bulk gauge',
  );
  s.destroy();
});

test('waitWritten helper sanity (all written records accounted for)', async () => {
  await waitWritten(api, written);
});
