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

test('processes that find the same stale lock at the same moment: exactly one takes it over', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const path = join(dir.path, 'LOCK');
  for (let round = 0; round < 4; round++) {
    await writeFile(path, '999999999 12345\n'); // left by a process that died
    const at = Date.now() + 2500; // after every process has loaded
    const procs = Array.from({ length: 4 }, () =>
      spawnTs('test/fs/fixtures/hold-lock.ts', [path, String(at)]),
    );
    try {
      // Every process either holds the lock or has exited refused.
      await waitFor(
        () => procs.every((p) => p.stdout().includes('locked') || p.child.exitCode !== null),
        'every process decided',
        20_000,
      );
      const holders = procs.filter((p) => p.stdout().includes('locked'));
      assert.equal(holders.length, 1, `round ${round}: ${holders.length} processes hold the lock`);
      for (const p of procs.filter((x) => !holders.includes(x)))
        assert.match(p.stderr(), /data directory is in use by another oklog process/);
      assert.match(await readFile(path, 'utf8'), new RegExp(`^${holders[0].pid} `));
    } finally {
      await Promise.all(procs.map((p) => p.kill('SIGKILL')));
    }
  }
});
