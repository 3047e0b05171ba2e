// Bulk uploads against an in-process ingest node (real sockets, real files), with the test playing
// the store through the IngestLog: big uploads stay one segment, each client is answered for its
// own segment, size limits and resets leave nothing behind.
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { text } from 'node:stream/consumers';
import { test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { RealFileSystem } from '../../node/fs/index.ts';
import { ingestFlagSpecs, startIngest } from '../../node/ingest/index.ts';
import { parseFlags } from '../../shared/flags.ts';
import { sleep, tempDir, waitFor } from '../helpers/index.ts';
import { bulkUpload, openConnection } from './util.ts';

async function start(t: { after: (fn: () => unknown) => void }, extra: string[] = []) {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const flags = parseFlags(ingestFlagSpecs('ingest'), [
    '-ingest.path',
    dir.path,
    '-ingest.fast',
    'tcp://127.0.0.1:0',
    '-ingest.durable',
    'tcp://127.0.0.1:0',
    '-ingest.bulk',
    'tcp://127.0.0.1:0',
    // Tiny rotation settings must not split a bulk upload.
    '-ingest.segment-flush-size',
    '4096',
    '-ingest.segment-flush-age',
    '50ms',
    ...extra,
  ]).values;
  const node = await startIngest({
    mode: 'ingest',
    flags,
    fs: new RealFileSystem(),
    logger: pino({ level: process.env.DBG ? 'debug' : 'silent' }),
    registry: new Registry(),
    clusterState: () => ({}),
  });
  t.after(() => node.stop());
  return { node, dir: dir.path };
}

/** Consumes every flushed segment (the store's part); returns their record counts. */
async function consumeAll(node: Awaited<ReturnType<typeof start>>['node']): Promise<number[]> {
  const counts: number[] = [];
  for (let c = await node.log.next(); c; c = await node.log.next()) {
    const body = await text(node.log.read(c.id).stream);
    counts.push(body.split('\n').length - 1);
    await node.log.commit(c.id);
  }
  return counts;
}

test('a 6 MiB upload is one segment despite a 4 KiB flush size; OK only after its commit', async (t) => {
  const { node } = await start(t);
  const n = 60_000;
  const lines = `${Array.from({ length: n }, (_, i) => `line ${i} ${'x'.repeat(90)}`).join('\n')}\n`;
  const up = await bulkUpload(node.ports.bulk, lines);
  await waitFor(() => node.stats().segments.flushed.count === 1, 'upload flushed', 15_000);
  await sleep(100);
  assert.equal(up.reply, '');
  assert.equal(node.stats().segments.active.count, 0);
  assert.deepEqual(await consumeAll(node), [n]);
  assert.equal(await up.replied, `OK ${n}\n`);
});

test('concurrent uploads are each answered for their own segment', async (t) => {
  const { node } = await start(t);
  const ups = await Promise.all(
    [1, 2, 3, 4, 5].map((k) => bulkUpload(node.ports.bulk, 'r\n'.repeat(k * 10))),
  );
  await waitFor(() => node.stats().segments.flushed.count === 5, 'uploads flushed');
  assert.deepEqual(
    (await consumeAll(node)).sort((a, b) => a - b),
    [10, 20, 30, 40, 50],
  );
  assert.deepEqual(
    await Promise.all(ups.map((u) => u.replied)),
    [1, 2, 3, 4, 5].map((k) => `OK ${k * 10}\n`),
  );
});

test('a reset mid-upload leaves no segment; upload too large → ERR and no segment either', async (t) => {
  const { node, dir } = await start(t, ['-ingest.bulk-max-size', '100000']);
  const s = await openConnection(node.ports.bulk);
  await new Promise((r) => s.write('partial upload\nmore\n', r));
  await waitFor(() => node.stats().written.records === 2, 'upload in progress');
  assert.equal(node.stats().segments.active.count, 1);
  s.resetAndDestroy();
  await waitFor(() => node.stats().connections.bulk === 0, 'bulk connection gone');
  await waitFor(() => node.stats().segments.active.count === 0, 'segment discarded');
  assert.equal(node.stats().segments.flushed.count, 0);

  const big = await bulkUpload(node.ports.bulk, `${'y'.repeat(99)}\n`.repeat(2000));
  assert.equal(await big.replied, 'ERR upload too large\n');
  // The reply can overtake the creation of the segment it discards: wait for the directory.
  await waitFor(async () => (await readdir(dir)).join() === 'LOCK', 'refused upload discarded');
  await sleep(100);
  assert.deepEqual(await readdir(dir), ['LOCK']);
  assert.equal(node.stats().segments.active.count + node.stats().segments.flushed.count, 0);
});
