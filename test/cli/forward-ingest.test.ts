// `oklog forward` into a real `oklog ingest` node. The records are read back from the node's
// segment files after it stopped, so this needs no store tier. Nodes are killed as the node
// process itself (spawnTs starts node directly, in its own process group), never a wrapper.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type Proc, sleep, startOklog, tempDir, waitFor } from '../helpers/index.ts';
import {
  lineNumbers,
  numberedLines,
  produceThroughRestart,
  run,
  startForward,
  writeStdin,
} from './helpers.ts';

const cleanups: (() => Promise<unknown>)[] = [];

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/**
 * A real `oklog ingest` node on a new data directory (both gone after the file's tests). `start`
 * starts it again on the same ports; `restart` stops it first with `signal` (SIGTERM: a clean exit 0).
 */
async function startIngest() {
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  const args = ['-ingest.path', join(dir.path, 'ingest')];
  const ingest = {
    dir: dir.path,
    node: await startOklog('ingest', args),
    async start() {
      ingest.node = await startOklog('ingest', args, { ports: ingest.node.ports });
    },
    async restart(signal: 'SIGTERM' | 'SIGKILL') {
      const expected = signal === 'SIGTERM' ? 0 : 'SIGKILL';
      assert.equal(await ingest.node.proc.kill(signal), expected, `stopped with ${signal}`);
      await sleep(300);
      await ingest.start();
    },
  };
  cleanups.push(() => ingest.node.proc.kill('SIGKILL'));
  return ingest;
}

/** `oklog forward <args>`, killed after the file's tests if still running. */
function forwarder(args: string[]): Proc {
  const fwd = startForward(args);
  cleanups.push(() => fwd.kill('SIGKILL'));
  return fwd;
}

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

/** Every number 1..n stored at least once, nothing garbled; returns the duplicates. */
async function checkStored(dataDir: string, n: number): Promise<number> {
  const nums = lineNumbers(await storedLines(dataDir));
  const seen = new Set(nums);
  for (let i = 1; i <= n; i++) assert.ok(seen.has(i), `record ${i} lost`);
  assert.ok(!seen.has(-1), 'no garbled record');
  return nums.length - seen.size;
}

test('-ack into a real ingester: every record stored exactly once, in order, with the topic', async () => {
  const { node, dir } = await startIngest();
  const r = await run(
    'cli/oklog.ts',
    ['forward', '-ack', '-topic', 'audit', '-ack-batch-records', '2000', `127.0.0.1:${node.ports.api}`],
    { input: numberedLines(20_000, '100% ok') },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await node.proc.kill('SIGTERM'), 0);
  const lines = await storedLines(dir);
  assert.equal(lines.length, 20_000);
  lines.forEach((l, i) => {
    assert.equal(l.slice(27), `audit line-${String(i + 1).padStart(7, '0')} 100% ok`);
  });
});

test('fast mode: the ingester restarts mid-stream and no record is lost', async (t) => {
  const ingest = await startIngest();
  const fwd = forwarder([`127.0.0.1:${ingest.node.ports.fast}`]);

  const total = await produceThroughRestart(fwd, () => ingest.restart('SIGTERM'));
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.equal(await ingest.node.proc.kill('SIGTERM'), 0);

  t.diagnostic(`duplicates from the resend window: ${await checkStored(ingest.dir, total)}`);
});

test('fast mode: kill -9 of the ingest node mid-stream; after its restart no record is lost', async (t) => {
  // SIGTERM lets the node read and write what it was sent; kill -9 loses whatever sat unread in
  // its socket buffers or unwritten in its memory. Only the resend window brings that back
  // (with -resend-window 0 this loses records).
  const ingest = await startIngest();
  const fwd = forwarder([`127.0.0.1:${ingest.node.ports.fast}`]);
  const total = await produceThroughRestart(fwd, () => ingest.restart('SIGKILL'));
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.match(fwd.stderr(), /connection lost/);
  assert.equal(await ingest.node.proc.kill('SIGTERM'), 0);
  t.diagnostic(`duplicates from the resend window: ${await checkStored(ingest.dir, total)}`);
});

test('end of input: the node is stopped (SIGSTOP) then killed; the forwarder re-sends, not exit 0', async () => {
  // Everything was written to a node that read none of it. At stdin EOF the forwarder must wait
  // for the node's own close; the kill resets the connection instead, so the window is sent
  // again once the node is back.
  const ingest = await startIngest();
  const stopped: Proc = ingest.node.proc;
  process.kill(-stopped.pid, 'SIGSTOP');
  cleanups.push(async () => {
    try {
      process.kill(-stopped.pid, 'SIGCONT');
    } catch {}
  });
  const fwd = forwarder([`127.0.0.1:${ingest.node.ports.fast}`]);
  await writeStdin(fwd, numberedLines(50_000));
  fwd.child.stdin!.end();
  await sleep(700);
  assert.equal(fwd.child.exitCode, null, 'still waiting for the node to confirm');
  process.kill(-stopped.pid, 'SIGKILL');
  await stopped.exited;
  await waitFor(() => fwd.stderr().includes('connection lost'), 'the reset noticed');
  await ingest.start();
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.equal(await ingest.node.proc.kill('SIGTERM'), 0);
  await checkStored(ingest.dir, 50_000);
});

test('signals: SIGTERM flushes everything into a real ingester and exits 0', async () => {
  const { node, dir } = await startIngest();
  const fwd = forwarder([`127.0.0.1:${node.ports.durable}`]);
  await waitFor(() => fwd.stderr().includes('msg=connected'), 'connected');
  await writeStdin(fwd, numberedLines(30_000));
  process.kill(-fwd.pid, 'SIGTERM');
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.equal(await node.proc.kill('SIGTERM'), 0);
  const nums = lineNumbers(await storedLines(dir));
  assert.deepEqual(
    nums,
    Array.from({ length: 30_000 }, (_, i) => i + 1),
    'exactly once, in order',
  );
});

test('-ack: the ingest node is killed (-9) and restarted mid-stream; every record is stored', async (t) => {
  const ingest = await startIngest();
  const fwd = forwarder(['-ack', `127.0.0.1:${ingest.node.ports.api}`]);
  const total = await produceThroughRestart(
    fwd,
    () => ingest.restart('SIGKILL'),
    () => true,
  );
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.match(fwd.stderr(), /batch not acknowledged; will resend/);
  assert.equal(await ingest.node.proc.kill('SIGTERM'), 0);
  t.diagnostic(`duplicates (answers lost with the node): ${await checkStored(ingest.dir, total)}`);
});

test('an ingester that stops reading at an invalid topic resets the connection: the forwarder exits 1, not 0', async () => {
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  const node = await startOklog('ingest', [
    '-ingest.path',
    join(dir.path, 'ingest'),
    '-topic-mode',
    'dynamic',
  ]);
  cleanups.push(() => node.proc.kill('SIGKILL'));
  const r = await run('cli/oklog.ts', ['forward', `127.0.0.1:${node.ports.fast}`], {
    input: 'app one\napp two\nbad!topic three\napp four\n',
  });
  // The lines after the refused one never reach the disk; a FIN would have told the forwarder
  // they had been read (it exited 0 before the node reset such connections).
  assert.equal(r.code, 1, r.stderr);
  assert.equal(await node.proc.kill('SIGTERM'), 0);
  const stored = new Set((await storedLines(dir.path)).map((l) => l.slice(27)));
  assert.deepEqual([...stored].sort(), ['app one', 'app two']);
});
