// The FileSystem contract (reference §6) on the real and virtual implementations, and the nop one.
import assert from 'node:assert/strict';
import { readFile as readOnDisk } from 'node:fs/promises';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import { test } from 'node:test';
import { createFileSystem, NopFileSystem, RealFileSystem, VirtualFileSystem } from '../../node/fs/index.ts';
import type { FileSystem } from '../../node/fs/types.ts';
import { tempDir } from '../helpers/index.ts';

for (const kind of ['real', 'virtual'] as const) {
  const make = (): FileSystem => (kind === 'real' ? new RealFileSystem() : new VirtualFileSystem());

  test(`${kind}: create, write (single and vectored), size, read back, non-destructive reads`, async (t) => {
    const dir = await tempDir();
    t.after(dir.cleanup);
    const fs = make();
    assert.equal(fs.kind, kind);
    await fs.mkdirAll(join(dir.path, 'a/b'));
    const p = join(dir.path, 'a/b/file');
    const f = await fs.create(p);
    assert.equal(f.path, p);
    assert.equal(f.size, 0);
    await f.write(Buffer.from('hello '));
    await f.write([Buffer.from('wor'), Buffer.alloc(0), Buffer.from('ld\n')]);
    await f.sync();
    assert.equal(f.size, 12);
    await f.close();
    assert.equal((await fs.readFile(p)).toString(), 'hello world\n');
    assert.equal(await text(fs.createReadStream(p)), 'hello world\n');
    assert.equal(await text(fs.createReadStream(p)), 'hello world\n', 'reads do not consume the file');
    assert.equal(await text(fs.createReadStream(p, { start: 6, end: 10 })), 'world');
    const st = await fs.stat(p);
    assert.equal(st.size, 12);
    assert.equal(st.name, 'file');
    assert.equal(st.path, p);
    assert.ok(st.mtimeMs > 0);
    assert.ok(await fs.exists(p));
    // create truncates
    const g = await fs.create(p);
    await g.close();
    assert.equal((await fs.readFile(p)).length, 0);
  });

  test(`${kind}: rename overwrites atomically, remove, chtimes, missing paths fail`, async (t) => {
    const dir = await tempDir();
    t.after(dir.cleanup);
    const fs = make();
    const a = join(dir.path, 'x.active');
    const b = join(dir.path, 'x.flushed');
    for (const [p, body] of [
      [a, 'new'],
      [b, 'old'],
    ]) {
      const f = await fs.create(p);
      await f.write(Buffer.from(body));
      await f.close();
    }
    await fs.rename(a, b);
    assert.equal(await fs.exists(a), false);
    assert.equal((await fs.readFile(b)).toString(), 'new');
    const when = new Date(Date.UTC(2020, 0, 1));
    await fs.chtimes(b, when, when);
    assert.equal((await fs.stat(b)).mtimeMs, when.getTime());
    await fs.remove(b);
    assert.equal(await fs.exists(b), false);
    await assert.rejects(fs.remove(b));
    await assert.rejects(fs.rename(b, a));
    await assert.rejects(fs.stat(b));
    await assert.rejects(fs.chtimes(b, when, when));
    await assert.rejects(fs.readFile(b));
    await assert.rejects(text(fs.createReadStream(b)));
  });

  test(`${kind}: list is recursive, files only, in lexical order; a missing root is empty`, async (t) => {
    const dir = await tempDir();
    t.after(dir.cleanup);
    const fs = make();
    await fs.mkdirAll(join(dir.path, 'sub'));
    for (const n of ['b', 'a', 'sub/c', 'c']) await (await fs.create(join(dir.path, n))).close();
    const names = (await fs.list(dir.path)).map((i) => i.path.slice(dir.path.length + 1));
    assert.deepEqual(names, ['a', 'b', 'c', 'sub/c']);
    assert.deepEqual(await fs.list(join(dir.path, 'missing')), []);
    await fs.syncDir(dir.path);
  });
}

test('real: bytes really reach the disk', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const fs = new RealFileSystem();
  const p = join(dir.path, 'f');
  const f = await fs.create(p);
  const big = Buffer.alloc(3 * 1024 * 1024, 0x61);
  await f.write([big, Buffer.from('\n')]);
  await f.close();
  assert.equal((await readOnDisk(p)).length, big.length + 1);
});

test('virtual: lock is "locked!" content; a second lock fails; release twice fails', async () => {
  const fs = new VirtualFileSystem();
  const l = await fs.lock('/d/LOCK');
  assert.equal(l.existed, false);
  assert.equal((await fs.readFile('/d/LOCK')).toString(), 'locked!');
  await assert.rejects(fs.lock('/d/LOCK'), { code: 'OKLOG_ERR_LOCKED' });
  await l.release();
  assert.equal(await fs.exists('/d/LOCK'), false);
  await assert.rejects(l.release());
  // An empty lock file (left over) counts as unlocked, and is reported as existing.
  await (await fs.create('/d/LOCK')).close();
  const l2 = await fs.lock('/d/LOCK');
  assert.equal(l2.existed, true);
  await l2.release();
});

test('nop: every operation succeeds and keeps nothing', async () => {
  const fs: FileSystem = new NopFileSystem();
  const f = await fs.create('/x');
  await f.write([Buffer.from('abc'), Buffer.from('de')]);
  assert.equal(f.size, 5);
  await f.sync();
  await f.close();
  assert.equal(await fs.exists('/x'), false);
  assert.deepEqual(await fs.list('/'), []);
  assert.equal((await fs.readFile('/x')).length, 0);
  assert.equal(await text(fs.createReadStream('/x')), '');
  await fs.rename('/x', '/y');
  await fs.remove('/y');
  await fs.mkdirAll('/z');
  await fs.chtimes('/x', new Date(), new Date());
  await fs.syncDir('/');
  const l = await fs.lock('/LOCK');
  assert.equal(l.existed, false);
  await l.release();
  assert.equal((await fs.stat('/x')).size, 0);
});

test('createFileSystem: real, virtual, nop (any case); anything else is a clear error', () => {
  assert.equal(createFileSystem('REAL').kind, 'real');
  assert.equal(createFileSystem('Virtual').kind, 'virtual');
  assert.equal(createFileSystem('nop').kind, 'nop');
  assert.throws(() => createFileSystem('x'), {
    message: 'invalid -filesystem "x"',
    code: 'OKLOG_ERR_INVALID_ARGUMENT',
  });
});
