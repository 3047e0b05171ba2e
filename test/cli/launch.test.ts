// The `oklog` / `oklogctl` commands (cli/*.js → cli/launch.js): bundled once into a cache
// directory, rebuilt when stale, falling back to tsx when the cache cannot be written; and a whole
// pipeline (ingeststore, forward, query) run through them, as users run it.
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ROOT, startIngeststore, tempDir, waitFor } from '../helpers/index.ts';
import { numberedLines, run } from './helpers.ts';

// Inside the package, so the bundles' package imports resolve to its node_modules.
const DIR = join(ROOT, 'node_modules', '.cache', `oklog-test-${process.pid}`);
const env = { OKLOG_BUNDLE_DIR: DIR };
after(() => rm(DIR, { recursive: true, force: true }));

test('a command is bundled on first use, reused while fresh, rebuilt when stale', async () => {
  const first = await run('cli/oklogctl.js', ['-h'], { env });
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout + first.stderr, /oklogctl/);
  const files = await readdir(DIR);
  for (const f of ['oklogctl.mjs', 'oklogctl.json', 'scan-worker.mjs']) assert.ok(files.includes(f), f);
  const manifest = JSON.parse(await readFile(join(DIR, 'oklogctl.json'), 'utf8'));
  assert.ok(
    manifest.inputs.some(([p]: [string]) => p === 'cli/oklogctl.ts'),
    'the manifest lists the sources',
  );
  const built = (await stat(join(DIR, 'oklogctl.mjs'))).mtimeMs;

  const again = await run('cli/oklogctl.js', ['-h'], { env });
  assert.equal(again.code, 0);
  assert.equal((await stat(join(DIR, 'oklogctl.mjs'))).mtimeMs, built, 'fresh: not rebuilt');

  // A source that changed (here: a manifest that remembers another size) means a rebuild.
  manifest.inputs[0][1] += 1;
  await writeFile(join(DIR, 'oklogctl.json'), JSON.stringify(manifest));
  const stale = await run('cli/oklogctl.js', ['-h'], { env });
  assert.equal(stale.code, 0);
  assert.notEqual((await stat(join(DIR, 'oklogctl.mjs'))).mtimeMs, built, 'stale: rebuilt');
});

test('without a writable cache the command still runs (through tsx)', async () => {
  const dir = await tempDir();
  try {
    const blocker = join(dir.path, 'file');
    await writeFile(blocker, '');
    const r = await run('cli/oklogctl.js', ['-h'], { env: { OKLOG_BUNDLE_DIR: join(blocker, 'cache') } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout + r.stderr, /oklogctl/);
  } finally {
    await dir.cleanup();
  }
});

test('ingeststore, forward and query through the commands: records come back once, in order', async () => {
  const dir = await tempDir();
  await mkdir(DIR, { recursive: true });
  const node = await startIngeststore(dir.path, '500ms', '500ms', { launcher: true, env });
  try {
    const input = numberedLines(5000);
    const fwd = await run('cli/oklog.js', ['forward', `127.0.0.1:${node.ports.fast}`], { input, env });
    assert.equal(fwd.code, 0, fwd.stderr);
    const api = `127.0.0.1:${node.ports.api}`;
    const query = () => run('cli/oklogctl.js', ['query', '-store', api, '-from', '1h'], { env });
    const done = await waitFor(
      async () => {
        const q = await query();
        return q.code === 0 && q.stdout.split('\n').length - 1 >= 5000 ? q : null;
      },
      'records queryable',
      60_000,
      300,
    );
    const want = input
      .toString('latin1')
      .split('\n')
      .slice(0, -1)
      .map((l) => `default ${l}`);
    assert.deepEqual(done!.stdout.split('\n').slice(0, -1), want);
    // A term query runs on the scan workers, which the bundled node starts from its own bundle.
    const q = await run('cli/oklogctl.js', ['query', '-store', api, '-from', '1h', '-q', 'line-0004242 '], {
      env,
    });
    assert.equal(q.code, 0, q.stderr);
    assert.equal(q.stdout, `${want[4241]}\n`);
  } finally {
    await node.proc.kill('SIGTERM');
    await dir.cleanup();
  }
});
