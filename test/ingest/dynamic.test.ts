// A real `oklog ingest -topic-mode dynamic` process: topic errors close the connection and keep
// the records before them; bulk uploads with a bad topic or no commit in time get ERR.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startOklog, tempDir, waitFor } from '../helpers/index.ts';
import {
  bulkUpload,
  drain,
  metricValue,
  openConnection,
  parseRecord,
  sendLines,
  stats,
  waitFlushed,
} from './util.ts';

let node: Awaited<ReturnType<typeof startOklog>>;
let api = '';
let cleanup: () => Promise<void>;
let written = 0;

before(async () => {
  const dir = await tempDir();
  cleanup = dir.cleanup;
  node = await startOklog('ingest', [
    '-ingest.path',
    dir.path,
    '-topic-mode',
    'dynamic',
    '-ingest.segment-flush-age',
    '100ms',
    '-ingest.bulk-ack-timeout',
    '700ms',
    '-debug',
  ]);
  api = node.api;
});

after(async () => {
  await node?.proc.kill('SIGKILL');
  await cleanup?.();
});

async function payloads(expected: number): Promise<string[]> {
  written += expected;
  await waitFlushed(api, written);
  const got = (await drain(api)).map((r) => parseRecord(r)[1]);
  assert.equal(got.length, expected, JSON.stringify(got));
  return got;
}

test('dynamic: the line carries its topic; a line without one closes the connection, earlier records kept', async () => {
  for (const bad of ['no-space-here', '', '_under x', 'bad!topic x', ' x']) {
    const s = await openConnection(node.ports.fast);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(`app1 first\nApp-2_b second\n${bad}\nnever stored\n`);
    await closed; // closed by the node, silently (no bytes sent back)
    assert.deepEqual(await payloads(2), ['app1 first', 'App-2_b second'], JSON.stringify(bad));
  }
  const m = await (await fetch(`${api}/metrics`)).text();
  assert.equal(metricValue(m, 'oklog_ingest_records_dropped_total{reason="invalid_topic"}'), 5);
  assert.match(node.proc.stderr(), /illegal topic name; closing/, 'logged at debug');
});

test('dynamic: durable port behaves the same', async () => {
  await sendLines(node.ports.durable, 'ok-topic fine\n');
  assert.deepEqual(await payloads(1), ['ok-topic fine']);
});

test('acked write in dynamic mode: line topics, or ?topic= for the whole body; 400 refuses everything', async () => {
  let r = await fetch(`${api}/ingest/write`, { method: 'POST', body: 'tA one\ntB two\n' });
  assert.deepEqual(await r.json(), { records: 2, bytes: 2 * 27 + 14 });
  r = await fetch(`${api}/ingest/write?topic=forced`, { method: 'POST', body: 'no topic here\n' });
  assert.equal(r.status, 200);
  await r.text();
  r = await fetch(`${api}/ingest/write`, { method: 'POST', body: 'tA good\nnotopic\n' });
  assert.equal(r.status, 400);
  assert.match(await r.text(), /illegal topic name/);
  assert.deepEqual((await payloads(3)).sort(), ['forced no topic here', 'tA one', 'tB two']);
});

test('bulk: ERR invalid topic; ERR timeout when no store commits in time (segment kept)', async () => {
  const bad = await bulkUpload(node.ports.bulk, 'tA fine\nno_topic\n');
  assert.equal(await bad.replied, 'ERR invalid topic\n');
  const slow = await bulkUpload(node.ports.bulk, 'tA waits\n');
  assert.equal(await slow.replied, 'ERR timeout waiting for commit\n');
  // The flushed upload is still delivered (at-least-once: the client resends it anyway).
  assert.deepEqual(await payloads(1), ['tA waits']);
  await waitFor(async () => (await stats(api)).connections.bulk === 0, 'bulk connections closed');
  const m = await (await fetch(`${api}/metrics`)).text();
  assert.equal(metricValue(m, 'oklog_ingest_bulk_results_total{result="err"}'), 2);
});
