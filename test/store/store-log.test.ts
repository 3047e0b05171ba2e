import assert from 'node:assert/strict';
import { readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { RealFileSystem, VirtualFileSystem } from '../../node/fs/index.ts';
import { createStoreMetrics } from '../../node/store/metrics.ts';
import { LocalQuery } from '../../node/store/query.ts';
import { compileScanFilter } from '../../node/store/query-params.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { receiveSegment } from '../../node/store/replicate.ts';
import { ScanPool } from '../../node/store/scan-pool.ts';
import { openChunkReader } from '../../node/store/segment-reader.ts';
import { tempDir } from '../helpers/index.ts';
import { line, plainQuery, query, records, silent, startTestNode, T0, ulidAt } from './helpers.ts';

async function* body(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

const names = async (dir: string) => (await readdir(dir)).filter((n) => n !== 'LOCK').sort();

test('replication commits LOW-HIGH.flushed; the same name twice is nudged, never overwritten', async () => {
  const dir = await tempDir();
  try {
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    const data = records(T0, 10);
    const r1 = await receiveSegment(log, body(data.slice(0, 100), data.slice(100)));
    assert.equal(r1.records, 10);
    assert.equal(r1.entry?.base, `${ulidAt(T0)}-${ulidAt(T0 + 9)}`);
    const r2 = await receiveSegment(log, body(data));
    assert.notEqual(r2.entry?.base, r1.entry?.base);
    assert.equal(r2.entry?.low, ulidAt(T0));
    assert.ok((r2.entry?.high ?? '') > ulidAt(T0 + 9));
    const files = await names(dir.path);
    assert.equal(files.length, 2);
    for (const f of files) assert.equal(await readFile(join(dir.path, f), 'utf8'), data);
    assert.deepEqual(log.stats().segments, { count: 2, bytes: 2 * data.length });
    assert.equal(log.stats().oldestRecord, new Date(T0).toISOString());
    await log.close();
  } finally {
    await dir.cleanup();
  }
});

test('replication validation: nothing is written for an invalid body', async () => {
  const dir = await tempDir();
  try {
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    const good = records(T0, 5);
    const cases: [string, string[]][] = [
      ['garbage', ['hello world\nthis is not a record\n']],
      ['short line', [`${good}abc\n`]],
      ['empty line', [`${good}\n`]],
      ['unsorted', [line(T0 + 5, 0, 'b') + line(T0, 0, 'a')]],
      ['lower-case ULID', [`${ulidAt(T0).toLowerCase().replace(/^0/, '0')}x default a\n`]],
      ['no separator', [`${ulidAt(T0)}Xdefault a\n`]],
      ['no final newline', [good.trimEnd()]],
      [
        'invalid later, split across chunks',
        [good.slice(0, 50), good.slice(50), ulidAt(T0 + 9).slice(0, 10), 'abc\n'],
      ],
    ];
    for (const [what, parts] of cases) {
      await assert.rejects(
        receiveSegment(log, body(...parts)),
        { code: 'OKLOG_ERR_INVALID_RECORDS', status: 400 },
        what,
      );
      assert.deepEqual(await names(dir.path), [], what);
    }
    const empty = await receiveSegment(log, body());
    assert.equal(empty.entry, null);
    assert.deepEqual(await names(dir.path), []);
    await log.close();
  } finally {
    await dir.cleanup();
  }
});

test('repeated ULIDs in a body are dropped (first copy wins): segments are strictly increasing', async () => {
  const dir = await tempDir();
  try {
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    const r = await receiveSegment(log, body(line(T0, 0, 'a') + line(T0, 0, 'b') + line(T0 + 1, 0, 'c')));
    assert.equal(r.records, 2);
    const files = await names(dir.path);
    assert.equal(files.length, 1);
    assert.equal(await readFile(join(dir.path, files[0]), 'utf8'), line(T0, 0, 'a') + line(T0 + 1, 0, 'c'));
    await log.close();
  } finally {
    await dir.cleanup();
  }
});

test('recovery: .active → named segment, torn/invalid lines quarantined, .reading reset, bad names aside', async () => {
  const dir = await tempDir();
  try {
    const d = dir.path;
    const clean = records(T0, 5);
    await writeFile(join(d, 'aaaa.active'), clean);
    const torn = records(T0 + 100, 3) + line(T0 + 200, 0, 'torn').slice(0, 35);
    await writeFile(join(d, 'bbbb.active'), torn);
    await writeFile(
      join(d, 'cccc.active'),
      `${records(T0 + 300, 2)}garbage line\n${line(T0 + 299, 0, 'late')}`,
    );
    await writeFile(join(d, 'dddd.active'), '');
    const rlo = ulidAt(T0 + 400);
    const rhi = ulidAt(T0 + 401);
    await writeFile(join(d, `${rlo}-${rhi}.reading`), records(T0 + 400, 2));
    await writeFile(join(d, 'not-a-segment.flushed'), 'x\n');
    await writeFile(join(d, 'notes.txt'), 'keep me');
    await writeFile(join(d, 'LOCK'), '999999999 1\n'); // a stale lock left by a dead process
    const log = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent });
    const files = await names(d);
    assert.deepEqual(files, [
      `${ulidAt(T0)}-${ulidAt(T0 + 4)}.flushed`,
      `${ulidAt(T0 + 100)}-${ulidAt(T0 + 102)}.flushed`,
      `${ulidAt(T0 + 300)}-${ulidAt(T0 + 301)}.flushed`,
      `${rlo}-${rhi}.flushed`,
      'bbbb.active.bad',
      'cccc.active.bad',
      'not-a-segment.flushed.bad',
      'notes.txt',
    ]);
    assert.equal(await readFile(join(d, files[0]), 'utf8'), clean);
    assert.equal(await readFile(join(d, files[1]), 'utf8'), records(T0 + 100, 3));
    assert.equal(
      await readFile(join(d, 'bbbb.active.bad'), 'utf8'),
      `${line(T0 + 200, 0, 'torn').slice(0, 35)}\n`,
    );
    assert.equal(
      await readFile(join(d, 'cccc.active.bad'), 'utf8'),
      `garbage line\n${line(T0 + 299, 0, 'late')}`,
    );
    assert.equal(log.stats().segments.count, 4);
    await log.close();
    assert.deepEqual((await readdir(d)).includes('LOCK'), false);
  } finally {
    await dir.cleanup();
  }
});

test('a second open of a locked store fails; the virtual filesystem works the same', async () => {
  const dir = await tempDir();
  try {
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    await assert.rejects(openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent }), {
      code: 'OKLOG_ERR_LOCKED',
    });
    await log.close();
  } finally {
    await dir.cleanup();
  }
  const vfs = new VirtualFileSystem();
  const log = await openStoreLog({ fs: vfs, root: '/store', logger: silent });
  await receiveSegment(log, body(records(T0, 3)));
  assert.equal(log.stats().segments.count, 1);
  await log.close();
  const again = await openStoreLog({ fs: vfs, root: '/store', logger: silent });
  assert.equal(again.stats().segments.count, 1);
  await again.close();
});

test('a segment a query holds is deleted only when released', async () => {
  const dir = await tempDir();
  try {
    const log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
    const r = await receiveSegment(log, body(records(T0, 3)));
    const [ref] = log.select(ulidAt(T0), ulidAt(T0 + 10));
    assert.equal(ref.entry, r.entry);
    await log.remove([ref.entry]);
    assert.equal((await names(dir.path)).length, 1);
    assert.equal(log.stats().segments.count, 0);
    assert.equal(log.select(ulidAt(T0), ulidAt(T0 + 10)).length, 0);
    ref.release();
    await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(await names(dir.path), []);
    await log.close();
  } finally {
    await dir.cleanup();
  }
});

test('recovery renames a segment whose name has its bounds reversed; it is then read, trashed and queried', async () => {
  const dir = await tempDir();
  try {
    const d = dir.path;
    const lo = ulidAt(T0);
    const hi = ulidAt(T0 + 4);
    // As Go OK Log could write them (it never checked the order of the bounds).
    await writeFile(join(d, `${hi}-${lo}.flushed`), records(T0, 5));
    const tlo = ulidAt(T0 + 100);
    const thi = ulidAt(T0 + 101);
    await writeFile(join(d, `${thi}-${tlo}.trashed`), records(T0 + 100, 2));
    const trashedAt = new Date(T0 + 3_600_000);
    await utimes(join(d, `${thi}-${tlo}.trashed`), trashedAt, trashedAt);
    // Its normalised name is taken by another file: that one is never overwritten.
    const olo = ulidAt(T0 + 200);
    const ohi = ulidAt(T0 + 201);
    await writeFile(join(d, `${olo}-${ohi}.flushed`), records(T0 + 200, 2));
    await writeFile(
      join(d, `${ohi}-${olo}.flushed`),
      line(T0 + 200, 0, 'other copy') + line(T0 + 201, 0, 'b'),
    );

    const log = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent });
    const files = await names(d);
    assert.ok(files.includes(`${lo}-${hi}.flushed`), files.join(' '));
    assert.ok(files.includes(`${tlo}-${thi}.trashed`), files.join(' '));
    assert.ok(files.includes(`${olo}-${ohi}.flushed`), files.join(' '));
    assert.ok(!files.some((f) => f.startsWith(hi) || f.startsWith(thi)), files.join(' '));
    assert.equal(
      files.filter((f) => f.startsWith(`${olo}-`)).length,
      2,
      'the colliding copy got a nudged name',
    );
    assert.equal(await readFile(join(d, `${olo}-${ohi}.flushed`), 'utf8'), records(T0 + 200, 2));
    // The trash time survived the rename.
    const trashed = log.list(['trashed']);
    assert.equal(trashed.length, 1);
    assert.equal(trashed[0].mtimeMs, trashedAt.getTime());
    assert.equal((await stat(join(d, `${tlo}-${thi}.trashed`))).mtimeMs, trashedAt.getTime());

    // The index's path is the file: a query reads it, retention renames it.
    const [ref] = log.select(lo, hi);
    assert.equal(await readFile(ref.path(), 'utf8'), records(T0, 5));
    ref.release();
    await log.trash(ref.entry);
    assert.ok((await names(d)).includes(`${lo}-${hi}.trashed`));
    await log.close();

    const node = await startTestNode({ root: d, workers: false });
    try {
      const r = await query(node.url, {
        from: new Date(T0 + 200).toISOString(),
        to: new Date(T0 + 201).toISOString(),
      });
      assert.equal(r.status, 200);
      assert.equal(r.lines.length, 2);
    } finally {
      await node.close();
    }
  } finally {
    await dir.cleanup();
  }
});

test('repair: a .flushed file with short, invalid and unsorted lines keeps its good records, the rest goes to .bad', async () => {
  const dir = await tempDir();
  try {
    const d = dir.path;
    const lo = ulidAt(T0);
    const hi = ulidAt(T0 + 9);
    const bad = [
      'short\n',
      `${'Z'.repeat(26)} default not a ulid\n`,
      `${ulidAt(T0 + 1)}Xno space\n`,
      line(T0 + 2, 0, 'out of order'),
    ];
    const content =
      line(T0, 0, 'a') +
      bad[0] +
      line(T0 + 3, 0, 'b') +
      bad[1] +
      bad[2] +
      line(T0 + 5, 0, 'c') +
      line(T0 + 5, 0, 'c again') +
      bad[3] +
      line(T0 + 9, 0, 'd');
    const name = `${lo}-${hi}.flushed`;
    await writeFile(join(d, name), content);
    // An earlier repair's .bad file of the same name is kept, not overwritten.
    await writeFile(join(d, `${name}.bad`), 'earlier\n');
    const registry = new Registry();
    const metrics = createStoreMetrics(registry);
    const log = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent, metrics });
    const [e] = log.list(['flushed']);
    // Concurrent callers share one repair.
    const [r, again] = await Promise.all([log.repair(e, 'test'), log.repair(e, 'test')]);
    assert.equal(r, again);
    assert.ok(r);
    assert.equal(r.records, 4);
    assert.equal(r.duplicates, 1);
    assert.equal(r.quarantined, 4);
    // The good records keep the segment's very name (the old file is gone).
    assert.equal(r.entry?.file, name);
    assert.equal(
      await readFile(join(d, name), 'utf8'),
      line(T0, 0, 'a') + line(T0 + 3, 0, 'b') + line(T0 + 5, 0, 'c') + line(T0 + 9, 0, 'd'),
    );
    assert.equal(await readFile(join(d, `${name}.bad`), 'utf8'), 'earlier\n');
    assert.equal(await readFile(join(d, `${name}.1.bad`), 'utf8'), bad.join(''));
    assert.deepEqual(await names(d), [name, `${name}.1.bad`, `${name}.bad`]);
    assert.equal(log.list(['flushed']).length, 1);
    assert.match(
      await registry.getSingleMetricAsString('oklog_store_repaired_segments_total'),
      /result="OK"} 1/,
    );
    assert.match(await registry.getSingleMetricAsString('oklog_store_bad_lines_total'), / 4$/m);
    // Only .flushed segments are repaired, each once: the old entry is gone, a claimed one skipped.
    assert.equal(await log.repair(e, 'again'), null);
    const [fresh] = log.list(['flushed']);
    await log.claim([fresh]);
    assert.equal(await log.repair(fresh, 'held by a compaction'), null);
    await log.reset([fresh]);
    await log.close();
  } finally {
    await dir.cleanup();
  }
});

test('a removed segment still being read is renamed aside: its name is free, its reader still reads it', async () => {
  const dir = await tempDir();
  try {
    const d = dir.path;
    const log = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent });
    const data = records(T0, 3);
    const r1 = await receiveSegment(log, body(data));
    assert.ok(r1.entry);
    const [ref] = log.select(ulidAt(T0), ulidAt(T0 + 2));
    await log.remove([ref.entry]);
    const aside = await names(d);
    assert.equal(aside.length, 1);
    assert.match(aside[0], /\.doomed$/);
    assert.equal(await readFile(ref.path(), 'utf8'), data, 'the reader finds the file under its new name');
    // The same records again take exactly the old name (no nudged HIGH).
    const r2 = await receiveSegment(log, body(data));
    assert.equal(r2.entry?.base, r1.entry.base);
    ref.release();
    await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(await names(d), [`${r1.entry.base}.flushed`]);
    // A .doomed file left by a crash is deleted at the next start.
    await writeFile(join(d, `${r1.entry.base}.reading.1234abcd.doomed`), data);
    await log.close();
    const again = await openStoreLog({ fs: new RealFileSystem(), root: d, logger: silent });
    assert.deepEqual(await names(d), [`${r1.entry.base}.flushed`]);
    await again.close();
  } finally {
    await dir.cleanup();
  }
});

/**
 * A filesystem whose renames, once `holding`, happen on disk at once but are reported done only
 * at `letGo()`: the window in which the file has its new name and the log still the old one.
 */
class HeldRenames extends RealFileSystem {
  holding = false;
  private gates: (() => void)[] = [];
  private onDisk: (() => void) | null = null;
  /** Resolves once the next held rename has happened on disk. */
  renamed(): Promise<void> {
    return new Promise((resolve) => {
      this.onDisk = resolve;
    });
  }
  override async rename(from: string, to: string): Promise<void> {
    await super.rename(from, to);
    if (!this.holding) return;
    this.onDisk?.();
    await new Promise<void>((resolve) => this.gates.push(resolve));
  }
  letGo(): void {
    this.holding = false;
    for (const g of this.gates.splice(0)) g();
  }
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

test('a reader letting go while its removed segment is being renamed aside: the file is still deleted', async () => {
  const dir = await tempDir();
  try {
    const fs = new HeldRenames();
    const log = await openStoreLog({ fs, root: dir.path, logger: silent });
    const data = records(T0, 3);
    const r = await receiveSegment(log, body(data));
    assert.ok(r.entry);
    const [ref] = log.select(ulidAt(T0), ulidAt(T0 + 2));
    fs.holding = true;
    const onDisk = fs.renamed();
    const removing = log.remove([ref.entry]); // held: renamed aside (….doomed)
    await onDisk;
    ref.release(); // the last reader goes while the log still has the old name
    await sleep(20);
    fs.letGo();
    await removing;
    await sleep(20);
    assert.deepEqual(await names(dir.path), [], 'the .doomed file is deleted');
    // The name is free and nothing of the old segment is left in the log.
    const again = await receiveSegment(log, body(data));
    assert.equal(again.entry?.base, r.entry.base);
    assert.deepEqual(log.stats().segments, { count: 1, bytes: data.length });
    await log.close();
  } finally {
    await dir.cleanup();
  }
});

test('a query opening a segment while a compaction renames it waits for the rename instead of failing', async () => {
  const dir = await tempDir();
  const pool = new ScanPool(silent, 1);
  try {
    await pool.prewarm();
    const fs = new HeldRenames();
    const log = await openStoreLog({ fs, root: dir.path, logger: silent });
    const data = records(T0, 50);
    const r = await receiveSegment(log, body(data));
    assert.ok(r.entry);
    const params = plainQuery(T0, T0 + 49, 'rec');
    const query = (withPool: boolean) => {
      const opts = { concurrency: 4, bufferSize: 64 << 10, pool: withPool ? pool : undefined };
      return new LocalQuery(log, compileScanFilter(params), params, opts);
    };
    // Held before the query selects the file: it is selected as .flushed, and renamed on disk
    // to .reading before it is opened.
    const queries = [query(true), query(false)];
    const [ref] = log.select(params.from, params.to);
    fs.holding = true;
    const onDisk = fs.renamed();
    const claiming = log.claim([r.entry]);
    await onDisk;
    assert.match(ref.path(), /\.flushed$/, 'the log has the old name');
    let finished = 0;
    const results = queries.map(async (q) => {
      const out: Buffer[] = [];
      for await (const c of q.records()) out.push(c);
      finished++;
      return Buffer.concat(out).toString();
    });
    // Without waiting for the rename, the worker scan and the scan here fail with ENOENT.
    const reader = openChunkReader(fs, ref.path, 64 << 10, ref.settled);
    await sleep(100);
    assert.equal(finished, 0, 'the queries wait for the rename');
    fs.letGo();
    await claiming;
    assert.deepEqual(await Promise.all(results), [data, data]);
    const chunk = await (await reader).next();
    assert.equal(chunk?.toString(), data);
    ref.release();
    await log.close();
  } finally {
    await pool.close();
    await dir.cleanup();
  }
});
