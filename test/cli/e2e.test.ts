// End to end with real processes: `oklog forward` into an `oklog ingeststore`, read back with
// `oklogctl query`. Never skipped: a node that cannot start is a failure, not a reason to pass.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { OklogClient } from '../../shared/client.ts';
import { sleep, startOklog, tempDir, waitFor } from '../helpers/index.ts';
import { lineNumbers, numberedLines, produceThroughRestart, run, startForward } from './helpers.ts';

const nodeArgs = (dir: string) => [
  '-store.segment-target-age',
  '500ms',
  '-ingest.segment-flush-age',
  '500ms',
  '-ingest.path',
  join(dir, 'ingest'),
  '-store.path',
  join(dir, 'store'),
];
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** All records in the last hour, as `<topic> <payload>` lines, through the client library. */
async function queryAll(api: string): Promise<string[]> {
  const client = new OklogClient(api);
  const r = await client.query({ from: Date.now() - 3_600_000, to: Date.now() + 1000 });
  const parts: Buffer[] = [];
  for await (const c of r.body) parts.push(c as Buffer);
  const lines = Buffer.concat(parts).toString('latin1').split('\n');
  lines.pop();
  return lines;
}

test('100k lines forwarded into an ingeststore come back exactly once, in order', async () => {
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  const node = await startOklog('ingeststore', nodeArgs(dir.path));
  cleanups.push(() => node.proc.kill('SIGKILL'));
  const api = `127.0.0.1:${node.ports.api}`;

  const input = numberedLines(100_000);
  const fwd = await run('cli/oklog.ts', ['forward', `127.0.0.1:${node.ports.fast}`], {
    input,
    timeoutMs: 60_000,
  });
  assert.equal(fwd.code, 0, fwd.stderr);
  await waitFor(async () => (await queryAll(api)).length >= 100_000, 'all records queryable', 60_000, 500);

  const q = await run('cli/oklogctl.ts', ['query', '-store', api, '-from', '1h'], { timeoutMs: 60_000 });
  assert.equal(q.code, 0, q.stderr);
  const expected = input
    .toString('latin1')
    .split('\n')
    .slice(0, -1)
    .map((l) => `default ${l}`);
  const got = q.stdout.split('\n').slice(0, -1);
  assert.equal(got.length, expected.length, 'exactly once');
  assert.ok(
    got.every((l, i) => l === expected[i]),
    'in order, unchanged',
  );
  await node.proc.kill('SIGTERM');
});

test('forwarder reconnects when the ingester restarts; nothing is lost', async (t) => {
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  let node = await startOklog('ingeststore', nodeArgs(dir.path));
  cleanups.push(() => node.proc.kill('SIGKILL'));
  const ports = node.ports;
  const api = `127.0.0.1:${ports.api}`;
  const fwd = startForward([`127.0.0.1:${ports.fast}`]);
  cleanups.push(() => fwd.kill('SIGKILL'));

  const total = await produceThroughRestart(fwd, async () => {
    assert.equal(await node.proc.kill('SIGTERM'), 0, 'clean shutdown');
    await sleep(300);
    node = await startOklog('ingeststore', nodeArgs(dir.path), { ports });
  });
  assert.equal(await fwd.exited, 0, fwd.stderr());
  assert.match(fwd.stderr(), /connection lost|connect failed/);

  // Wait for every record; on timeout the check below names the first missing one.
  const nums: number[] = await waitFor<number[] | null>(
    async () => {
      const n = lineNumbers(await queryAll(api));
      return new Set(n).size >= total ? n : null;
    },
    'every record queryable after the restart',
    60_000,
    500,
  )
    .then((n) => n ?? [])
    .catch(async () => lineNumbers(await queryAll(api)));
  const seen = new Set(nums);
  for (let i = 1; i <= total; i++) assert.ok(seen.has(i), `record ${i} lost`);
  t.diagnostic(`duplicates from the resend window: ${nums.length - seen.size}`);
  await node.proc.kill('SIGTERM');
});

test('with a pending timeout shorter than the consumer batches, every record is stored exactly once', async () => {
  const dir = await tempDir();
  cleanups.push(dir.cleanup);
  const node = await startOklog('ingeststore', [
    ...nodeArgs(dir.path),
    // Small segments keep the consumer gathering (for up to 2 s) while the ingester would expire
    // its first claims after 300 ms.
    '-ingest.segment-flush-size',
    '65536',
    '-store.segment-target-age',
    '2s',
    '-ingest.segment-pending-timeout',
    '300ms',
  ]);
  cleanups.push(() => node.proc.kill('SIGKILL'));
  const input = numberedLines(200_000);
  const fwd = await run('cli/oklog.ts', ['forward', `127.0.0.1:${node.ports.fast}`], { input });
  assert.equal(fwd.code, 0, fwd.stderr);
  const api = `127.0.0.1:${node.ports.api}`;
  const lines = await waitFor(
    async () => {
      const l = await queryAll(api);
      return l.length >= 200_000 ? l : null;
    },
    'every record queryable',
    30_000,
    300,
  );
  assert.deepEqual(
    lineNumbers(lines!),
    Array.from({ length: 200_000 }, (_, i) => i + 1),
  );
  await node.proc.kill('SIGTERM');
});
