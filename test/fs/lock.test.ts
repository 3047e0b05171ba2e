// The real data-directory lock: a live holder (another process, or this one) makes a second taker
// fail at once with a clear error; a lock left by a killed process is stale and taken over.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { RealFileSystem } from '../../node/fs/real.ts';
import { spawnTs, tempDir, waitFor } from '../helpers/index.ts';

const fs = new RealFileSystem();

test('a second lock on a held directory fails at once; release removes the file; twice is an error', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'nested/LOCK');
  const lock = await fs.lock(path);
  assert.equal(lock.existed, false);
  assert.match(await readFile(path, 'utf8'), new RegExp(`^${process.pid} \\d+\\n$`));
  const started = Date.now();
  await assert.rejects(fs.lock(path), {
    code: 'OKLOG_ERR_LOCKED',
    message: `locking ${path}: data directory is in use by another oklog process (remove nothing; stop that process first)`,
  });
  assert.ok(Date.now() - started < 500, 'fails at once');
  await lock.release();
  await assert.rejects(readFile(path));
  await assert.rejects(lock.release());
  const again = await fs.lock(path);
  assert.equal(again.existed, false);
  await again.release();
});

test('another live process holds the lock; after kill -9 its stale lock is taken over', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'LOCK');
  const holder = spawnTs('test/fs/fixtures/hold-lock.ts', [path]);
  t.after(() => holder.kill('SIGKILL'));
  await waitFor(() => holder.stdout().includes('locked existed=false'), 'holder locked');
  await assert.rejects(fs.lock(path), { code: 'OKLOG_ERR_LOCKED' });
  // A second process fails too, with the message on stderr and a non-zero exit.
  const second = spawnTs('test/fs/fixtures/hold-lock.ts', [path]);
  t.after(() => second.kill('SIGKILL'));
  assert.notEqual(await second.exited, 0);
  assert.match(second.stderr(), /data directory is in use by another oklog process/);

  await holder.kill('SIGKILL');
  const lock = await fs.lock(path);
  assert.equal(lock.existed, true, 'a stale lock was there');
  assert.match(await readFile(path, 'utf8'), new RegExp(`^${process.pid} `));
  await lock.release();
});

test('stale lock files: dead pid, reused pid (different start time), empty or garbage content', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'LOCK');
  for (const content of ['999999999 12345\n', `${process.pid} 1\n`, '', 'garbage']) {
    await writeFile(path, content);
    const lock = await fs.lock(path);
    assert.equal(lock.existed, true, JSON.stringify(content));
    await lock.release();
  }
});
