// Real processes killed the hard way and the soft way:
// - kill -9 in the middle of fast, durable and acked ingest: after a restart on the same directory
//   (stale lock) every record that reached a flushed segment and every acknowledged record is
//   there, none twice, none torn; a second process on a live directory fails at once;
// - SIGTERM: exit 0, every record read is in a flushed segment, nothing active, lock released.
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { nodePorts, portFlags, sleep, spawnTs, startOklog, tempDir } from '../helpers/index.ts';
import {
  bulkUpload,
  drain,
  openConnection,
  parseRecord,
  recordsOnDisk,
  segmentFiles,
  stats,
  waitWritten,
} from './util.ts';

test('kill -9 mid-ingest: flushed and acknowledged records survive a restart, none twice', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const args = [
    '-ingest.path',
    dir.path,
    '-ingest.segment-flush-age',
    '50ms',
    '-ingest.segment-flush-size',
    '8192',
  ];
  const first = await startOklog('ingest', args);
  t.after(() => first.proc.kill('SIGKILL'));

  // A second node on the same directory fails at once, with a clear message.
  const ports = await nodePorts();
  const started = Date.now();
  const second = spawnTs('cli/oklog.ts', ['ingest', ...portFlags(ports), ...args]);
  t.after(() => second.kill('SIGKILL'));
  assert.equal(await second.exited, 1);
  assert.ok(Date.now() - started < 15_000);
  assert.match(second.stderr(), /locking .*LOCK: data directory is in use by another oklog process/);

  // Load: three fast and one durable connection writing numbered lines, plus acked writes.
  let stop = false;
  const sent = new Set<string>();
  const writers: Promise<void>[] = [];
  const sockets: Socket[] = [];
  for (const [c, port] of [
    first.ports.fast,
    first.ports.fast,
    first.ports.fast,
    first.ports.durable,
  ].entries()) {
    const s = await openConnection(port);
    sockets.push(s);
    writers.push(
      (async () => {
        for (let i = 0; !stop && !s.destroyed; i++) {
          let batch = '';
          for (let j = 0; j < 50; j++) {
            const line = `conn=${c} n=${i * 50 + j} ${'p'.repeat(60)}`;
            sent.add(`default ${line}`);
            batch += `${line}\n`;
          }
          if (!s.write(batch))
            await new Promise((r) => {
              s.once('drain', r);
              s.once('close', r);
            });
          await sleep(2);
        }
      })(),
    );
  }
  const acked: string[] = [];
  writers.push(
    (async () => {
      for (let i = 0; !stop; i++) {
        const lines = Array.from({ length: 20 }, (_, j) => `acked req=${i} n=${j}`);
        try {
          const r = await fetch(`${first.api}/ingest/write?topic=acked`, {
            method: 'POST',
            body: lines.join('\n'),
          });
          if (r.status === 200) acked.push(...lines.map((l) => `acked ${l}`));
          await r.text();
        } catch {
          return; // the node died mid-request: not acknowledged
        }
      }
    })(),
  );
  await waitWritten(first.api, 20_000, 30_000);
  await first.proc.kill('SIGKILL');
  stop = true;
  for (const s of sockets) s.destroy();
  await Promise.all(writers);

  const flushed = await recordsOnDisk(dir.path, '.flushed');
  const active = await recordsOnDisk(dir.path, '.active');
  assert.ok(flushed.length > 0, 'some segments were flushed before the kill');
  assert.ok(acked.length > 0, 'some writes were acknowledged before the kill');

  // Restart on the same directory: the LOCK left by kill -9 is stale and does not block.
  const again = await startOklog('ingest', args);
  t.after(() => again.proc.kill('SIGKILL'));
  assert.ok(
    (await segmentFiles(dir.path)).every((n) => n.endsWith('.flushed')),
    'recovered to .flushed',
  );
  const drained = await drain(again.api);
  const ulids = new Set<string>();
  const lines = new Set<string>();
  for (const r of drained) {
    const [ulid, rest] = parseRecord(r);
    assert.ok(!ulids.has(ulid), `duplicate ULID ${ulid}`);
    assert.ok(!lines.has(rest), `duplicate record ${rest}`);
    ulids.add(ulid);
    lines.add(rest);
    assert.ok(sent.has(rest) || rest.startsWith('acked '), `unexpected record ${rest.slice(0, 60)}`);
  }
  for (const r of [...flushed, ...active])
    assert.ok(lines.has(parseRecord(r)[1]), 'on-disk record recovered');
  for (const a of acked) assert.ok(lines.has(a), `acknowledged record lost: ${a}`);
  assert.equal(drained.length, flushed.length + active.length);
  const s = await stats(again.api);
  assert.equal(s.segments.flushed.count, 0);
  await again.proc.kill('SIGTERM');
});

test('SIGTERM: exit 0, every record read is flushed, the partial line dropped, the lock released', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  // A long flush age: only the shutdown flushes.
  const node = await startOklog('ingest', ['-ingest.path', dir.path, '-ingest.segment-flush-age', '1h']);
  t.after(() => node.proc.kill('SIGKILL'));
  const fast = await openConnection(node.ports.fast);
  const durable = await openConnection(node.ports.durable);
  const n = 5000;
  const body = (tag: string) => Array.from({ length: n }, (_, i) => `${tag} ${i}`).join('\n');
  fast.write(`${body('fast')}\nfast-partial`);
  durable.write(`${body('durable')}\n`);
  await waitWritten(node.api, 2 * n);
  // A bulk upload waiting for its commit is told the node is going away.
  const up = await bulkUpload(node.ports.bulk, 'bulk-1\n');
  await sleep(200);
  const before = await stats(node.api);
  assert.equal(before.segments.active.count, 2, 'fast and durable segments still active');
  assert.equal(before.segments.flushed.count, 1, 'the bulk upload, flushed at its half-close');

  assert.equal(await node.proc.kill('SIGTERM'), 0);
  assert.equal(await up.replied, 'ERR shutting down\n');
  const names = await readdir(dir.path);
  assert.ok(!names.includes('LOCK'), 'lock released');
  assert.ok(
    names.every((f) => f.endsWith('.flushed')),
    `only flushed segments: ${names}`,
  );
  const records = (await recordsOnDisk(dir.path, '.flushed')).map((r) => parseRecord(r)[1]);
  const fastRecs = records.filter((r) => r.startsWith('default fast'));
  const durableRecs = records.filter((r) => r.startsWith('default durable'));
  assert.equal(fastRecs.length, n);
  assert.equal(durableRecs.length, n);
  assert.equal(fastRecs.at(-1), `default fast ${n - 1}`, 'in order, partial line dropped');
  assert.ok(records.includes('default bulk-1'), 'the bulk upload is kept for later consumption');
  fast.destroy();
  durable.destroy();
});
