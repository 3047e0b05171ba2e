import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { RealFileSystem, VirtualFileSystem } from '../../node/fs/index.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { receiveSegment } from '../../node/store/replicate.ts';
import { tempDir } from '../helpers/index.ts';
import { line, records, silent, T0, ulidAt } from './helpers.ts';

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
