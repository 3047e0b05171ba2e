import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { RealFileSystem } from '../../node/fs/index.ts';
import {
  Compactor,
  type CompactorOptions,
  pickOverlapping,
  pickSequential,
} from '../../node/store/compactor.ts';
import { createStoreMetrics, type StoreMetrics } from '../../node/store/metrics.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { receiveSegment } from '../../node/store/replicate.ts';
import type { StoreLog } from '../../node/store/store-log.ts';
import { ulidTime } from '../../shared/ulid.ts';
import { tempDir } from '../helpers/index.ts';
import { line, query, records, silent, startTestNode, T0, ulidAt } from './helpers.ts';

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

/** A compactor over `log`: 1 MiB outputs, nothing expires, trash purged at once (unless `o` says otherwise). */
function compactor(log: StoreLog, metrics: StoreMetrics, o: Partial<CompactorOptions> = {}): Compactor {
  return new Compactor({
    log,
    logger: silent,
    metrics,
    targetSize: 1 << 20,
    retainMs: 1e12,
    purgeMs: 0,
    ...o,
  });
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
    const c = compactor(log, metrics, { targetSize });
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
    const c = compactor(log, metrics);
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
    const c = compactor(log, metrics);
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
    const c = compactor(log, metrics, { retainMs: 2 * hour, purgeMs: hour });
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

test('a compaction input with lines that are not records is repaired once; compaction then goes on', async () => {
  const dir = await tempDir();
  try {
    const d = dir.path;
    // An OK Log-era segment: a line shorter than a ULID, garbage, an out-of-order record.
    const good = [line(T0, 0, 'old-1'), line(T0 + 4, 0, 'old-2'), line(T0 + 8, 0, 'old-3')];
    const bad = [
      'oops\n',
      `${'not a ulid at all, but long enough'.padEnd(40, '.')}\n`,
      line(T0 + 1, 0, 'late'),
    ];
    const oldName = `${ulidAt(T0)}-${ulidAt(T0 + 8)}.flushed`;
    await writeFile(join(d, oldName), good[0] + bad[0] + good[1] + bad[1] + bad[2] + good[2]);
    // Overlapping good segments, and a separate pair that must not be blocked by the broken one.
    await writeFile(
      join(d, `${ulidAt(T0 + 2)}-${ulidAt(T0 + 6)}.flushed`),
      records(T0 + 2, 5).replace(/rec/g, 'new'),
    );
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    const log = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent, metrics });
    try {
      const c = compactor(log, metrics);
      const first = await c.compactOverlapping();
      assert.equal(first.result, 'Error');
      // Repaired at once: the good records in a segment of the same name, the rest in .bad.
      assert.equal(await readFile(join(d, `${oldName}.bad`), 'utf8'), bad.join(''));
      assert.equal(await readFile(join(d, oldName), 'utf8'), good.join(''));
      assert.match(
        await registry.getSingleMetricAsString('oklog_store_repaired_segments_total'),
        /result="OK"} 1/,
      );
      // The next round compacts: no failure every 4 s.
      const second = await c.compactOverlapping();
      assert.equal(second.result, 'OK');
      assert.equal(second.inputs, 2);
      const recs = await allRecords(d);
      assert.deepEqual(
        recs.map((l) => l.slice(27)),
        [
          'default old-1',
          'default new 0',
          'default new 1',
          'default old-2',
          'default new 3',
          'default new 4',
          'default old-3',
        ],
      );
      assert.equal((await c.compactOverlapping()).result, 'NoSegmentsAvailable');
    } finally {
      await log.close();
    }
    // Queries see the good records of both files.
    const node = await startTestNode({ root: d, workers: false });
    try {
      const r = await query(node.url, {
        from: new Date(T0).toISOString(),
        to: new Date(T0 + 10).toISOString(),
      });
      assert.equal(r.status, 200);
      assert.equal(r.lines.length, 7);
    } finally {
      await node.close();
    }
  } finally {
    await dir.cleanup();
  }
});

test('a compaction input whose last line has no newline is repaired: the line is set aside, not dropped', async () => {
  const dir = await tempDir();
  try {
    const d = dir.path;
    // A torn write at the end of a segment, and a segment overlapping it.
    const torn = line(T0 + 6, 0, 'torn').trimEnd();
    const name = `${ulidAt(T0)}-${ulidAt(T0 + 6)}.flushed`;
    await writeFile(join(d, name), line(T0, 0, 'a-0') + line(T0 + 4, 0, 'a-4') + torn);
    await writeFile(
      join(d, `${ulidAt(T0 + 2)}-${ulidAt(T0 + 3)}.flushed`),
      line(T0 + 2, 0, 'b-2') + line(T0 + 3, 0, 'b-3'),
    );
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    const log = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent, metrics });
    try {
      const c = compactor(log, metrics);
      // The merge used to end at the last newline: the line was gone, and nothing said so.
      assert.equal((await c.compactOverlapping()).result, 'Error');
      assert.equal(await readFile(join(d, `${name}.bad`), 'utf8'), `${torn}\n`);
      assert.match(
        await registry.getSingleMetricAsString('oklog_store_repaired_segments_total'),
        /result="OK"} 1/,
      );
      assert.equal((await c.compactOverlapping()).result, 'OK');
      assert.deepEqual(
        (await allRecords(d)).map((l) => l.slice(27)),
        ['default a-0', 'default b-2', 'default b-3', 'default a-4'],
      );
    } finally {
      await log.close();
    }
  } finally {
    await dir.cleanup();
  }
});

test('records outside the name bounds or unsorted across chunks are found by the compaction check', async () => {
  await withLog(async (log, dir) => {
    const metrics = createStoreMetrics(new Registry());
    // Named as if it ended at T0 + 5, but holding a record of T0 + 50: queries would miss it.
    const lying = `${ulidAt(T0)}-${ulidAt(T0 + 5)}.flushed`;
    await writeFile(join(dir, lying), line(T0, 0, 'a') + line(T0 + 50, 0, 'beyond'));
    await log.close();
    const reopened = await openStoreLog({ fs: new RealFileSystem(), root: dir, logger: silent });
    try {
      await receiveSegment(reopened, body(line(T0 + 3, 0, 'b')));
      const c = compactor(reopened, metrics);
      assert.equal((await c.compactOverlapping()).result, 'Error');
      // Renamed from its records: now it overlaps nothing, and every record is findable.
      const files = (await readdir(dir)).filter((n) => n.endsWith('.flushed')).sort();
      assert.deepEqual(files, [
        `${ulidAt(T0)}-${ulidAt(T0 + 50)}.flushed`,
        `${ulidAt(T0 + 3)}-${ulidAt(T0 + 3)}.flushed`,
      ]);
      assert.equal((await c.compactOverlapping()).result, 'OK');
      assert.equal((await allRecords(dir)).length, 3);
    } finally {
      await reopened.close();
    }
  });
});

test('sequential selection does not merge beyond the time span', () => {
  const day = 86_400_000;
  const daily = Array.from({ length: 6 }, (_, k) => seg(T0 + k * day, T0 + k * day + 1000, 10));
  assert.equal(pickSequential(daily, 1000, 32, day - 1), null);
  assert.deepEqual(pickSequential(daily, 1000, 32, 2 * day + 1000), daily.slice(0, 3));
  assert.deepEqual(pickSequential(daily, 1000, 32), daily);
});

test('retention: thirty daily segments are not merged into one that outlives retain by weeks', async () => {
  await withLog(async (log, dir, now) => {
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    const day = 86_400_000;
    const retainMs = 8 * day; // span: retain / 8 = one day
    for (let k = 0; k < 30; k++)
      await receiveSegment(
        log,
        body(line(T0 + k * day, 0, `day ${k} a`) + line(T0 + k * day + 3_600_000, 0, `day ${k} b`)),
      );
    const c = compactor(log, metrics, { retainMs, purgeMs: day });
    assert.equal(c.maxSpanMs, day);
    for (let i = 0; i < 40 && (await c.compactSequential()).result === 'OK'; i++);
    const segs = log.list(['flushed']);
    assert.ok(segs.length >= 15, `merged into ${segs.length} segments`);
    for (const e of segs)
      assert.ok(ulidTime(e.high) - ulidTime(e.low) <= day, `${e.base} spans more than a day`);
    // Day 0's records are trashed by retain + span, although 29 later days are still kept.
    now.t = T0 + retainMs + day + 3_600_001;
    assert.ok((await c.trashExpired()) >= 1);
    const kept = await allRecords(dir);
    assert.ok(!kept.some((l) => l.includes('day 0 ')), 'day 0 is in the trash');
    assert.ok(
      kept.some((l) => l.includes('day 29 ')),
      'later days are kept',
    );
  });
});

test('compaction outputs are cut at the time span, and are then left alone', async () => {
  await withLog(async (log, dir) => {
    const metrics = createStoreMetrics(new Registry());
    const hour = 3_600_000;
    let a = '';
    let b = '';
    for (let h = 0; h < 10; h++) {
      a += line(T0 + h * hour, 0, `a${h}`);
      b += line(T0 + h * hour + 1, 0, `b${h}`);
    }
    await receiveSegment(log, body(a));
    await receiveSegment(log, body(b));
    const c = compactor(log, metrics, { maxSpanMs: 3 * hour });
    const r = await c.compactOverlapping();
    assert.equal(r.result, 'OK');
    // Each output ends at its first record's time + 3 h: a0..a3, then b3 (3 h + 1 ms)..b6, a7..b9.
    assert.equal(r.outputs, 3);
    for (const e of log.list(['flushed'])) assert.ok(ulidTime(e.high) - ulidTime(e.low) <= 3 * hour, e.base);
    assert.equal((await allRecords(dir)).length, 20);
    assert.equal((await c.compactOverlapping()).result, 'NoSegmentsAvailable');
    assert.equal((await c.compactSequential()).result, 'NoSegmentsAvailable');
  });
});

test('a compaction output with an input’s bounds takes that very name', async () => {
  await withLog(async (log, dir) => {
    const metrics = createStoreMetrics(new Registry());
    await receiveSegment(log, body(line(T0, 0, 'a') + line(T0 + 10, 0, 'a')));
    await receiveSegment(log, body(line(T0 + 5, 0, 'b')));
    // A query reads the wider input throughout the compaction.
    const [held] = log.select(ulidAt(T0), ulidAt(T0));
    const c = compactor(log, metrics);
    assert.equal((await c.compactOverlapping()).result, 'OK');
    const flushed = (await readdir(dir)).filter((n) => n.endsWith('.flushed'));
    assert.deepEqual(flushed, [`${ulidAt(T0)}-${ulidAt(T0 + 10)}.flushed`]);
    assert.equal((await allRecords(dir)).length, 3);
    assert.equal(await readFile(held.path(), 'utf8'), line(T0, 0, 'a') + line(T0 + 10, 0, 'a'));
    held.release();
    await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual((await readdir(dir)).sort(), [`${ulidAt(T0)}-${ulidAt(T0 + 10)}.flushed`, 'LOCK']);
    // The output is an ordinary segment: it can be compacted and trashed.
    await receiveSegment(log, body(line(T0 + 7, 0, 'c')));
    assert.equal((await c.compactOverlapping()).result, 'OK');
    assert.equal((await allRecords(dir)).length, 4);
  });
});

test('set-aside files (*.bad, quarantine/) are deleted once older than retain + purge', async () => {
  await withLog(async (log, dir, now) => {
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    const hour = 3_600_000;
    await mkdir(join(dir, 'quarantine'));
    const old = new Date(Date.now() - 4 * hour);
    const files = {
      oldBad: join(dir, 'x.flushed.bad'),
      newBad: join(dir, 'y.active.bad'),
      oldQ: join(dir, 'quarantine', '127.0.0.1_7650-2026-12-01T055639114Z-e9bc0a156436.segment'),
      notes: join(dir, 'notes.txt'),
    };
    for (const f of Object.values(files)) await writeFile(f, 'x\n');
    for (const f of [files.oldBad, files.oldQ, files.notes]) await utimes(f, old, old);
    now.t = Date.now();
    const c = compactor(log, metrics, { retainMs: 2 * hour, purgeMs: hour });
    await c.purgeTrash();
    const left = [...(await readdir(dir)), ...(await readdir(join(dir, 'quarantine')))].sort();
    assert.deepEqual(left, ['LOCK', 'notes.txt', 'quarantine', 'y.active.bad']);
    const m = await registry.getSingleMetricAsString('oklog_store_swept_files_total');
    assert.match(m, /kind="bad"} 1/);
    assert.match(m, /kind="quarantine"} 1/);
  });
});
