import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { RealFileSystem } from '../../node/fs/index.ts';
import { Compactor, pickOverlapping, pickSequential } from '../../node/store/compactor.ts';
import { createStoreMetrics } from '../../node/store/metrics.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { receiveSegment } from '../../node/store/replicate.ts';
import type { StoreLog } from '../../node/store/store-log.ts';
import { tempDir } from '../helpers/index.ts';
import { line, silent, T0, ulidAt } from './helpers.ts';

const seg = (lo: number, hi: number, size = 10) => ({ low: ulidAt(lo), high: ulidAt(hi), size });

test('overlapping selection takes pairs, and the largest overlapping group', () => {
  assert.equal(pickOverlapping([seg(0, 1), seg(2, 3)], 32), null);
  const pair = [seg(0, 5), seg(3, 8), seg(10, 11)];
  assert.deepEqual(pickOverlapping(pair, 32), pair.slice(0, 2));
  // Touching bounds overlap (inclusive), and overlap is transitive.
  const chain = [seg(0, 2), seg(2, 4), seg(4, 6), seg(10, 20), seg(11, 12)];
  assert.deepEqual(pickOverlapping(chain, 32), chain.slice(0, 3));
  assert.deepEqual(pickOverlapping(chain, 2), chain.slice(0, 2));
});

test('sequential selection: small neighbours only, and only when the output at least doubles', () => {
  const target = 1000;
  // Two small equal segments merge.
  assert.deepEqual(pickSequential([seg(0, 1, 100), seg(2, 3, 100)], target, 32)?.length, 2);
  // A big segment (≥ target/2) is never rewritten.
  assert.equal(pickSequential([seg(0, 1, 600), seg(2, 3, 100)], target, 32), null);
  // A growing segment waits until its neighbours add at least as much as it holds.
  assert.equal(pickSequential([seg(0, 1, 300), seg(2, 3, 100)], target, 32), null);
  const s = [seg(0, 1, 300), seg(2, 3, 100), seg(4, 5, 100), seg(6, 7, 100)];
  assert.deepEqual(pickSequential(s, target, 32), s);
  // Budget: the total stays ≤ target.
  const t = [seg(0, 1, 400), seg(2, 3, 400), seg(4, 5, 400)];
  assert.deepEqual(pickSequential(t, target, 32), t.slice(0, 2));
  // Write amplification: feeding 1-unit segments one at a time rewrites each byte O(log n) times.
  const sizes: number[] = [];
  let written = 0;
  for (let i = 0; i < 512; i++) {
    sizes.push(1);
    for (;;) {
      const list = sizes.map((size, k) => seg(2 * k, 2 * k + 1, size));
      const pick = pickSequential(list, 1 << 20, 64);
      if (pick === null) break;
      const first = list.indexOf(pick[0]);
      const total = pick.reduce((a, p) => a + p.size, 0);
      written += total;
      sizes.splice(first, pick.length, total);
    }
  }
  assert.ok(written <= 512 * 10, `rewrote ${written} units for 512 ingested`);
});

async function* body(s: string): AsyncGenerator<Buffer> {
  yield Buffer.from(s);
}

async function withLog(fn: (log: StoreLog, dir: string, now: { t: number }) => Promise<void>) {
  const dir = await tempDir();
  const now = { t: T0 + 1000 };
  const log = await openStoreLog({
    fs: new RealFileSystem(),
    root: dir.path,
    logger: silent,
    now: () => now.t,
  });
  try {
    await fn(log, dir.path, now);
  } finally {
    await log.close();
    await dir.cleanup();
  }
}

async function allRecords(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const f of (await readdir(dir)).filter((n) => n.endsWith('.flushed')).sort())
    out.push(...(await readFile(join(dir, f), 'utf8')).trimEnd().split('\n'));
  return out;
}

test('overlapping compaction merges a pair, drops duplicates, splits by size with dedupe across splits', async () => {
  await withLog(async (log, dir) => {
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    // Two replicas with the same records (different payload bytes, same ULIDs) plus extras.
    let a = '';
    let b = '';
    const pad = (i: number) => String(i).padStart(3, '0');
    for (let i = 0; i < 200; i++) {
      if (i % 2 === 0) a += line(T0 + i, 0, `a-${pad(i)}`);
      b += line(T0 + i, 0, `b-${pad(i)}`);
    }
    // Every line is 41 bytes: outputs of 3 lines end on line 2, 5, 8, … and the line after each
    // split (2, 8, 14, …) has a duplicate in the other input, which must not survive the split.
    const len = line(T0, 0, 'a-000').length;
    const targetSize = 3 * len;
    await receiveSegment(log, body(a));
    await receiveSegment(log, body(b));
    const c = new Compactor({ log, logger: silent, metrics, targetSize, retainMs: 1e12, purgeMs: 0 });
    const r = await c.compactOverlapping();
    assert.equal(r.result, 'OK');
    assert.equal(r.inputs, 2);
    assert.equal(r.outputs, Math.ceil(200 / 3));
    const recs = await allRecords(dir);
    assert.equal(recs.length, 200);
    const ids = recs.map((l) => l.slice(0, 26));
    assert.deepEqual(ids, [...new Set(ids)].sort());
    // First copy wins: input order is by LOW then HIGH, both start at T0; a's HIGH is lower.
    assert.ok(recs[0].endsWith('a-000'));
    assert.ok(recs[3].endsWith('b-003'));
    const files = (await readdir(dir)).filter((n) => n.endsWith('.flushed')).sort();
    assert.equal(files.length, r.outputs);
    for (const f of files) {
      const content = await readFile(join(dir, f), 'utf8');
      const ls = content.trimEnd().split('\n');
      assert.equal(f, `${ls[0].slice(0, 26)}-${ls[ls.length - 1].slice(0, 26)}.flushed`);
      assert.ok(content.length <= targetSize);
    }
    assert.equal((await c.compactOverlapping()).result, 'NoSegmentsAvailable');
    const m = await registry.getSingleMetricAsString('oklog_store_compact_duration_seconds');
    assert.match(m, /kind="Overlapping",compacted="2",result="OK"/);
    assert.match(m, /result="NoSegmentsAvailable"/);
  });
});

test('sequential compaction merges small neighbours into one', async () => {
  await withLog(async (log, dir) => {
    const metrics = createStoreMetrics(new Registry());
    for (let k = 0; k < 4; k++) await receiveSegment(log, body(line(T0 + k * 10, 0, `s${k}`)));
    const c = new Compactor({
      log,
      logger: silent,
      metrics,
      targetSize: 1 << 20,
      retainMs: 1e12,
      purgeMs: 0,
    });
    assert.equal((await c.compactOverlapping()).result, 'NoSegmentsAvailable');
    const r = await c.compactSequential();
    assert.equal(r.result, 'OK');
    assert.equal(r.inputs, 4);
    const files = (await readdir(dir)).filter((n) => n.endsWith('.flushed'));
    assert.equal(files.length, 1);
    assert.equal((await allRecords(dir)).length, 4);
  });
});

test('a failed compaction deletes its outputs and gives the inputs back', async () => {
  await withLog(async (log, dir) => {
    const metrics = createStoreMetrics(new Registry());
    await receiveSegment(log, body(line(T0, 0, 'a') + line(T0 + 5, 0, 'a')));
    await receiveSegment(log, body(line(T0 + 2, 0, 'b') + line(T0 + 3, 0, 'b')));
    const before = (await readdir(dir)).sort();
    // Make the commit fail: the log refuses new writes once closed.
    const orig = log.commit.bind(log);
    log.commit = async () => {
      throw new Error('disk full');
    };
    const c = new Compactor({
      log,
      logger: silent,
      metrics,
      targetSize: 1 << 20,
      retainMs: 1e12,
      purgeMs: 0,
    });
    const r = await c.compactOverlapping();
    assert.equal(r.result, 'Error');
    assert.deepEqual((await readdir(dir)).sort(), before);
    log.commit = orig;
    assert.equal((await c.compactOverlapping()).result, 'OK');
  });
});

test('retention trashes by HIGH ULID and purge deletes after the purge period (injected clock)', async () => {
  await withLog(async (log, dir, now) => {
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    const hour = 3_600_000;
    await receiveSegment(log, body(line(T0, 0, 'old') + line(T0 + hour, 0, 'old end')));
    await receiveSegment(log, body(line(T0 + 5 * hour, 0, 'new')));
    const c = new Compactor({
      log,
      logger: silent,
      metrics,
      targetSize: 1 << 20,
      retainMs: 2 * hour,
      purgeMs: hour,
    });
    now.t = T0 + 3 * hour - 1; // first segment's newest record is 2h − 1ms old: kept
    assert.equal(await c.trashExpired(), 0);
    now.t = T0 + 3 * hour + 1;
    assert.equal(await c.trashExpired(), 1);
    const trashed = (await readdir(dir)).filter((n) => n.endsWith('.trashed'));
    assert.equal(trashed.length, 1);
    assert.equal(log.stats().trashed.count, 1);
    assert.equal(log.stats().segments.count, 1);
    assert.equal(await c.purgeTrash(), 0);
    now.t += hour + 1;
    assert.equal(await c.purgeTrash(), 1);
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n.endsWith('.trashed')),
      [],
    );
    assert.match(await registry.getSingleMetricAsString('oklog_store_trashed_segments'), /success="true"} 1/);
    assert.match(await registry.getSingleMetricAsString('oklog_store_purged_segments'), /success="true"} 1/);
    // tick() rotates overlapping → sequential → trash → purge.
    now.t += 10 * hour;
    for (let i = 0; i < 4; i++) await c.tick();
    assert.equal(log.stats().trashed.count, 1);
  });
});
