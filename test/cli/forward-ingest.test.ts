// `oklog forward` into a real `oklog ingest` node. The records are read back from the node's
// segment files after a clean stop, so this needs no store tier.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { sleep, startOklog, tempDir } from '../helpers/index.ts';
import { lineNumbers, numberedLines, produceThroughRestart, run, startForward } from './helpers.ts';

let available = false;
let skipReason = '';
const cleanups: (() => Promise<unknown>)[] = [];

before(async () => {
  const h = await run('cli/oklog.ts', ['ingest', '-h'], { timeoutMs: 20_000 });
  available = h.code === 0;
  if (!available) skipReason = `oklog ingest -h: ${h.stderr.trim().split('\n')[0]}`;
});
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** Every stored line of every segment, sorted by ULID. */
async function storedLines(dataDir: string): Promise<string[]> {
  const dir = join(dataDir, 'ingest');
  const lines: string[] = [];
  for (const f of await readdir(dir)) {
    if (!/\.(active|flushed|pending)$/.test(f)) continue;
    const text = (await readFile(join(dir, f))).toString('latin1');
    for (const l of text.split('\n')) if (l !== '') lines.push(l);
  }
  return lines.sort();
}

test('-ack into a real ingester: every record stored exactly once, in order, with the topic', async (t) => {
  if (!available) return t.skip(skipReason);
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  const node = await startOklog('ingest', ['-ingest.path', join(dir.path, 'ingest')]);
  cleanups.push(() => node.proc.kill('SIGKILL'));
  const r = await run(
    'cli/oklog.ts',
    ['forward', '-ack', '-topic', 'audit', '-ack-batch-records', '2000', `127.0.0.1:${node.ports.api}`],
    { input: numberedLines(20_000, '100% ok') },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await node.proc.kill('SIGTERM'), 0);
  const lines = await storedLines(dir.path);
  assert.equal(lines.length, 20_000);
  lines.forEach((l, i) => {
    assert.equal(l.slice(27), `audit line-${String(i + 1).padStart(7, '0')} 100% ok`);
  });
});

test('fast mode: the ingester restarts mid-stream and no record is lost', async (t) => {
  if (!available) return t.skip(skipReason);
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  let node = await startOklog('ingest', ['-ingest.path', join(dir.path, 'ingest')]);
  cleanups.push(() => node.proc.kill('SIGKILL'));
  const ports = node.ports;
  const fwd = startForward([`127.0.0.1:${ports.fast}`]);
  cleanups.push(() => fwd.kill('SIGKILL'));

  const total = await produceThroughRestart(fwd, async () => {
    assert.equal(await node.proc.kill('SIGTERM'), 0, 'clean shutdown');
    await sleep(300);
    node = await startOklog('ingest', ['-ingest.path', join(dir.path, 'ingest')], { ports });
  });
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.equal(await node.proc.kill('SIGTERM'), 0);

  const nums = lineNumbers(await storedLines(dir.path));
  const seen = new Set(nums);
  for (let i = 1; i <= total; i++) assert.ok(seen.has(i), `record ${i} lost`);
  assert.ok(!seen.has(-1), 'no garbled record');
  t.diagnostic(`duplicates from the resend window: ${nums.length - seen.size}`);
});
