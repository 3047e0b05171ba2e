// Writer rotation (size; age measured from the first write), lazy creation, and failures that
// must close one connection without taking the node down (in-process node, real sockets).
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { RealFileSystem, VirtualFileSystem } from '../../node/fs/index.ts';
import type { FileSystem, WritableFile } from '../../node/fs/types.ts';
import { ingestFlagSpecs, startIngest } from '../../node/ingest/index.ts';
import { createIngestMetrics } from '../../node/ingest/metrics.ts';
import { IngestLog } from '../../node/ingest/segment-log.ts';
import { Writer } from '../../node/ingest/writer.ts';
import { parseFlags } from '../../shared/flags.ts';
import { sleep, tempDir, waitFor } from '../helpers/index.ts';
import { openConnection, sendLines } from './util.ts';

const logger = pino({ level: 'silent' });

async function setup(
  t: { after: (fn: () => unknown) => void },
  fs: FileSystem,
  flushSize: number,
  flushAgeMs: number,
) {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const registry = new Registry();
  const metrics = createIngestMetrics(registry);
  const log = await IngestLog.open({ fs, root: dir.path, logger, metrics, pendingTimeoutMs: 60_000 });
  t.after(() => log.close());
  const tally = { records: 0, bytes: 0 };
  const writer = new Writer({ log, metrics, logger, flushSize, flushAgeMs, tally });
  return { dir: dir.path, log, writer, registry, tally };
}

async function counter(registry: Registry, name: string, label?: Record<string, string>): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  const vals = m?.values.filter((v) => !label || Object.entries(label).every(([k, x]) => v.labels[k] === x));
  return vals?.reduce((a, v) => a + v.value, 0) ?? 0;
}

test('no file until the first record; size rotation after the write that reaches the limit', async (t) => {
  const { dir, log, writer, registry, tally } = await setup(t, new RealFileSystem(), 10, 0);
  assert.deepEqual(await readdir(dir), ['LOCK']);
  await writer.write([Buffer.from('12345\n')], 1);
  assert.equal(log.stats().active.count, 1);
  await writer.write([Buffer.from('678\n'), Buffer.from('9\n')], 2); // 12 bytes ≥ 10: rotate
  assert.equal(log.stats().active.count, 0);
  assert.deepEqual(log.stats().flushed, { count: 1, bytes: 12 });
  await writer.write([Buffer.from('a\n')], 1);
  await writer.close();
  assert.equal(log.stats().flushed.count, 2);
  assert.deepEqual(tally, { records: 4, bytes: 14 });
  assert.equal(await counter(registry, 'oklog_ingest_writer_flushes_total', { reason: 'size' }), 1);
  assert.equal(await counter(registry, 'oklog_ingest_writer_flushes_total', { reason: 'close' }), 1);
  await writer.close(); // idempotent
  const empty = new Writer({
    log,
    metrics: createIngestMetrics(new Registry()),
    logger,
    flushSize: 10,
    flushAgeMs: 50,
    tally,
  });
  await empty.close();
  assert.equal(log.stats().flushed.count, 2, 'a writer that wrote nothing flushes nothing');
});

test('age rotation is timed from the first write of each segment, not by a free-running ticker', async (t) => {
  const { log, writer, registry } = await setup(t, new VirtualFileSystem(), 1 << 20, 300);
  await sleep(400); // an idle writer: nothing to rotate, and no ticker phase to inherit
  const start = Date.now();
  await writer.write([Buffer.from('a\n')], 1);
  await sleep(150);
  await writer.write([Buffer.from('b\n')], 1);
  assert.equal(log.stats().flushed.count, 0);
  await waitFor(() => log.stats().flushed.count === 1, 'age flush', 2000, 10);
  const age = Date.now() - start;
  assert.ok(age >= 290 && age < 1500, `flushed ${age} ms after the first write`);
  assert.equal(await counter(registry, 'oklog_ingest_writer_flushes_total', { reason: 'age' }), 1);
  const h = await registry.getSingleMetric('oklog_ingest_segment_flush_age_seconds')?.get();
  const sum = h?.values.find((v) => (v as { metricName?: string }).metricName?.endsWith('_sum'))?.value ?? 0;
  assert.ok(sum >= 0.29, `flush age ${sum}s measured from the first write`);
  await writer.close();
});

test('sync fsyncs and counts; a write error is counted and rejects', async (t) => {
  const { writer, registry } = await setup(t, new RealFileSystem(), 1 << 20, 0);
  await writer.write([Buffer.from('a\n')], 1, true);
  await writer.sync();
  assert.equal(await counter(registry, 'oklog_ingest_writer_syncs_total'), 2);
});

/** A real filesystem whose create/write can be made to fail. */
class FaultyFs extends RealFileSystem {
  failCreate = false;
  failWrite = false;
  override async create(path: string): Promise<WritableFile> {
    if (this.failCreate) throw Object.assign(new Error('EMFILE: too many open files'), { code: 'EMFILE' });
    const f = await super.create(path);
    const self = this;
    return {
      path: f.path,
      get size() {
        return f.size;
      },
      async write(chunks) {
        if (self.failWrite)
          throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
        return f.write(chunks);
      },
      sync: () => f.sync(),
      close: () => f.close(),
    };
  }
}

test('writer creation and write failures close that connection only; the node keeps serving', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const fs = new FaultyFs();
  const registry = new Registry();
  const flags = parseFlags(ingestFlagSpecs('ingest'), [
    '-ingest.path',
    dir.path,
    '-ingest.fast',
    'tcp://127.0.0.1:0',
    '-ingest.durable',
    'tcp://127.0.0.1:0',
    '-ingest.bulk',
    'tcp://127.0.0.1:0',
  ]).values;
  const node = await startIngest({ mode: 'ingest', flags, fs, logger, registry, clusterState: () => ({}) });
  t.after(() => node.stop());

  fs.failCreate = true;
  const s = await openConnection(node.ports.fast);
  const closed = new Promise((r) => s.once('close', r));
  s.write('doomed\n');
  await closed; // the node closed it
  assert.equal(await counter(registry, 'oklog_ingest_writer_errors_total', { op: 'create' }), 1);
  assert.equal(await counter(registry, 'oklog_ingest_records_dropped_total', { reason: 'write_error' }), 1);

  fs.failCreate = false;
  fs.failWrite = true;
  await sendLines(node.ports.durable, 'also doomed\n');
  // The client's close does not wait for the node's write attempt.
  await waitFor(
    async () => (await counter(registry, 'oklog_ingest_writer_errors_total', { op: 'write+sync' })) === 1,
    'write error counted',
  );

  fs.failWrite = false;
  await sendLines(node.ports.fast, 'fine\n');
  await waitFor(() => node.stats().written.records === 1, 'the node still ingests');
  await waitFor(() => node.stats().connections.fast === 0, 'connections closed');
  assert.equal(await counter(registry, 'oklog_connected_clients', { modality: 'fast' }), 0);
});

test('start-up fails fast and clearly when a port is taken or a flag is bad', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const { createServer } = await import('node:net');
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  t.after(() => blocker.close());
  const port = (blocker.address() as { port: number }).port;
  const base = [
    '-ingest.path',
    dir.path,
    '-ingest.fast',
    'tcp://127.0.0.1:0',
    '-ingest.bulk',
    'tcp://127.0.0.1:0',
  ];
  const start = (extra: string[], mode: 'ingest' | 'ingeststore' = 'ingest') =>
    startIngest({
      mode,
      flags: parseFlags(ingestFlagSpecs(mode), [...base, '-ingest.durable', 'tcp://127.0.0.1:0', ...extra])
        .values,
      fs: new RealFileSystem(),
      logger,
      registry: new Registry(),
      clusterState: () => ({}),
    });
  await assert.rejects(start(['-ingest.durable', `tcp://127.0.0.1:${port}`]), {
    code: 'OKLOG_ERR_LISTEN',
    message: `-ingest.durable: listen tcp 127.0.0.1:${port}: address already in use`,
  });
  await assert.rejects(start(['-topic', 'bad topic']), { message: 'topic name "bad topic" invalid' });
  await assert.rejects(start(['-topic-mode', 'prefix']), {
    message: 'topic mode "prefix" invalid, must be "static" or "dynamic"',
  });
  await assert.rejects(start(['-ingest.topic', '-x'], 'ingeststore'), { message: 'topic name "-x" invalid' });
  await assert.rejects(start(['-ingest.segment-flush-age', '0s']), /segment-flush-age must be a positive/);
  // Nothing was left bound or locked: a good start works.
  const ok = await start([]);
  await ok.stop();
  assert.deepEqual(await readdir(dir.path), []);
});

test('flag names and defaults follow OK Log (topic flags renamed in ingeststore)', () => {
  const byName = (mode: 'ingest' | 'ingeststore') =>
    new Map(ingestFlagSpecs(mode).map((s) => [s.name, s.default]));
  const ingest = byName('ingest');
  assert.equal(ingest.get('topic-mode'), 'static');
  assert.equal(ingest.get('topic'), 'default');
  assert.equal(ingest.get('ingest.fast'), 'tcp://0.0.0.0:7651');
  assert.equal(ingest.get('ingest.durable'), 'tcp://0.0.0.0:7652');
  assert.equal(ingest.get('ingest.bulk'), 'tcp://0.0.0.0:7653');
  assert.equal(ingest.get('ingest.path'), 'data/ingest');
  assert.equal(ingest.get('ingest.segment-flush-size'), 16777216);
  assert.equal(ingest.get('ingest.segment-flush-age'), '3s');
  assert.equal(ingest.get('ingest.segment-pending-timeout'), '1m0s');
  assert.equal(ingest.get('ingest.max-record-size'), 1048576);
  const store = byName('ingeststore');
  assert.equal(store.get('ingest.topic-mode'), 'static');
  assert.equal(store.get('ingest.topic'), 'default');
  assert.equal(store.has('topic'), false);
});
