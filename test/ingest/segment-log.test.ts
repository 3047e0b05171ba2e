// IngestLog in-process, on the real and virtual filesystems: the state machine, recovery, the
// choice of the oldest segment, the pending timeout (injected clock), commit notifications.
import assert from 'node:assert/strict';
import { readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import { test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { NopFileSystem, RealFileSystem, VirtualFileSystem } from '../../node/fs/index.ts';
import type { FileSystem } from '../../node/fs/types.ts';
import { createIngestMetrics } from '../../node/ingest/metrics.ts';
import { type ActiveSegment, goTime, IngestLog } from '../../node/ingest/segment-log.ts';
import { tempDir } from '../helpers/index.ts';

const logger = pino({ level: 'silent' });

async function openLog(fs: FileSystem, root: string, clock = { t: 1_700_000_000_000 }, timeoutMs = 60_000) {
  const registry = new Registry();
  const metrics = createIngestMetrics(registry);
  const log = await IngestLog.open({
    fs,
    root,
    logger,
    metrics,
    pendingTimeoutMs: timeoutMs,
    now: () => clock.t,
    timeoutCheckMs: 0,
  });
  return { log, registry, metrics, clock };
}

async function writeSegment(log: IngestLog, body: string, lastWriteMs?: number): Promise<ActiveSegment> {
  const seg = await log.create();
  await seg.file.write(Buffer.from(body));
  seg.firstWriteMs = 0;
  seg.lastWriteMs = lastWriteMs ?? Date.now();
  return seg;
}

async function metric(registry: Registry, name: string): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  return m?.values.reduce((a, v) => a + v.value, 0) ?? Number.NaN;
}

for (const kind of ['real', 'virtual'] as const) {
  test(`${kind}: active → flushed → pending → committed, with OK Log's errors on the way`, async (t) => {
    const dir = await tempDir();
    t.after(dir.cleanup);
    const fs = kind === 'real' ? new RealFileSystem() : new VirtualFileSystem();
    const { log, registry } = await openLog(fs, dir.path);
    t.after(() => log.close());

    assert.equal(await log.next(), null, 'nothing flushed yet');
    const seg = await writeSegment(log, 'r1\nr2\n');
    assert.match(seg.path, /[0-9a-f-]{36}\.active$/);
    assert.deepEqual(log.stats().active, { count: 1, bytes: 6 });
    assert.ok(await log.flush(seg, 'close'));
    assert.deepEqual(log.stats().flushed, { count: 1, bytes: 6 });
    assert.equal(await log.flush(seg, 'close'), false, 'a second flush is a no-op');

    const claim = await log.next();
    assert.ok(claim);
    assert.match(claim.id, /^[0-9a-f-]{36}$/);
    assert.notEqual(claim.id, claim.segmentId, 'the claim id is not the file name');
    assert.deepEqual(log.stats().pending, { count: 1, bytes: 6 });
    assert.equal(await log.next(), null);
    await assert.rejects(log.commit(claim.id), { code: 'OKLOG_ERR_SEGMENT_NOT_READ', status: 428 });
    const { stream, size } = log.read(claim.id);
    assert.equal(size, 6);
    assert.equal(await text(stream), 'r1\nr2\n');
    assert.throws(() => log.read(claim.id), { code: 'OKLOG_ERR_SEGMENT_READING', status: 500 });
    assert.match(
      log.segmentState(),
      new RegExp(`^1 pending\\n ${claim.id}: reading=true deadline=.* \\+0000 UTC\\n$`),
    );
    assert.equal(await log.commit(claim.id), 6);
    await assert.rejects(log.commit(claim.id), { code: 'OKLOG_ERR_NOT_FOUND' });
    assert.throws(() => log.read('00000000-0000-0000-0000-000000000000'), { code: 'OKLOG_ERR_NOT_FOUND' });
    assert.deepEqual(log.stats(), {
      active: { count: 0, bytes: 0 },
      flushed: { count: 0, bytes: 0 },
      pending: { count: 0, bytes: 0 },
    });
    assert.equal(await metric(registry, 'oklog_ingest_committed_segments'), 1);
    assert.equal(await metric(registry, 'oklog_ingest_committed_bytes'), 6);
    assert.equal(await metric(registry, 'oklog_ingest_writer_flushes_total'), 1);
    if (kind === 'real') assert.deepEqual(await readdir(dir.path), ['LOCK']);
  });

  test(`${kind}: failed segments return to flushed and are offered again; empty ones are never flushed`, async (t) => {
    const dir = await tempDir();
    t.after(dir.cleanup);
    const fs = kind === 'real' ? new RealFileSystem() : new VirtualFileSystem();
    const { log, registry } = await openLog(fs, dir.path);
    t.after(() => log.close());
    const empty = await log.create();
    assert.equal(await log.flush(empty, 'close'), false);
    assert.equal(await fs.exists(empty.path), false, 'empty active segment deleted');
    await log.flush(await writeSegment(log, 'x\n'), 'size');
    const a = await log.next();
    assert.ok(a);
    await log.fail(a.id); // unread
    const b = await log.next();
    assert.ok(b);
    assert.equal(b.segmentId, a.segmentId);
    await text(log.read(b.id).stream);
    await log.fail(b.id); // read
    await assert.rejects(log.fail(b.id), { code: 'OKLOG_ERR_NOT_FOUND' });
    assert.equal(log.stats().flushed.count, 1);
    assert.equal(await metric(registry, 'oklog_ingest_failed_segments'), 2);
  });
}

test('the oldest flushed segment (by last write) is claimed first; ties are broken by name', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const { log } = await openLog(new VirtualFileSystem(), dir.path);
  t.after(() => log.close());
  const ids: Record<string, string> = {};
  for (const [name, at] of [
    ['new', 3000],
    ['old', 1000],
    ['mid1', 2000],
    ['mid2', 2000],
  ] as const) {
    const s = await writeSegment(log, `${name}\n`, at);
    ids[name] = s.id;
    await log.flush(s, 'age');
  }
  const order: string[] = [];
  for (let c = await log.next(); c; c = await log.next()) order.push(c.segmentId);
  const mids = [ids.mid1, ids.mid2].sort();
  assert.deepEqual(order, [ids.old, ...mids, ids.new]);
});

test('pending timeout fails a claim back, but not while its read is still streaming', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const { log, clock } = await openLog(new RealFileSystem(), dir.path, undefined, 1000);
  t.after(() => log.close());
  await log.flush(await writeSegment(log, 'a\n'), 'close');
  await log.flush(await writeSegment(log, 'b\n'), 'close');
  const idle = await log.next();
  const busy = await log.next();
  assert.ok(idle && busy);
  const { stream } = log.read(busy.id); // not consumed yet: still streaming
  clock.t += 999;
  assert.equal(await log.expirePending(), 0, 'deadline not reached');
  clock.t += 2;
  assert.equal(await log.expirePending(), 1, 'the idle claim expired, the streaming one waits');
  await assert.rejects(log.commit(idle.id), { code: 'OKLOG_ERR_NOT_FOUND' });
  await text(stream);
  await new Promise((r) => setImmediate(r));
  assert.equal(await log.expirePending(), 1);
  assert.equal(log.stats().flushed.count, 2);
  assert.equal(log.stats().pending.count, 0);
});

test('readAll and reread: the same bytes again, only after a read; a claim read in-process is held until commit', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const { log, clock } = await openLog(new RealFileSystem(), dir.path, undefined, 1000);
  t.after(() => log.close());
  await log.flush(await writeSegment(log, 'a\nb\n'), 'close');
  const c = await log.next();
  assert.ok(c);
  assert.throws(() => log.reread(c.id), { code: 'OKLOG_ERR_SEGMENT_NOT_READ' });
  assert.equal((await log.readAll(c.id)).toString(), 'a\nb\n');
  await assert.rejects(log.readAll(c.id), { code: 'OKLOG_ERR_SEGMENT_READING' });
  const first = log.reread(c.id);
  const second = log.reread(c.id);
  assert.equal(await text(first), 'a\nb\n');
  clock.t += 1001;
  assert.equal(await log.expirePending(), 0, 'one re-read is still open');
  assert.equal(await text(second), 'a\nb\n');
  await new Promise((r) => setImmediate(r));
  clock.t += 60_000;
  assert.equal(await log.expirePending(), 0, 'held: its consumer lives in this process');
  assert.equal(await log.commit(c.id), 4);
  assert.throws(() => log.reread(c.id), { code: 'OKLOG_ERR_NOT_FOUND' });
  assert.equal(log.stats().pending.count, 0);
});

test('the pending timeout runs on its own timer', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const registry = new Registry();
  const log = await IngestLog.open({
    fs: new VirtualFileSystem(),
    root: dir.path,
    logger,
    metrics: createIngestMetrics(registry),
    pendingTimeoutMs: 100,
  });
  t.after(() => log.close());
  await log.flush(await writeSegment(log, 'a\n'), 'close');
  assert.ok(await log.next());
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(log.stats().flushed.count, 1);
  assert.equal(await metric(registry, 'oklog_ingest_failed_segments'), 1);
});

test('recovery: .active and .pending become .flushed; empty files, torn tails and strangers are handled', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const u = (n: number) => `0000000${n}-0000-4000-8000-000000000000`;
  await writeFile(join(dir.path, `${u(1)}.active`), 'a1\n');
  await writeFile(join(dir.path, `${u(2)}.pending`), 'p2\n');
  await writeFile(join(dir.path, `${u(3)}.flushed`), 'f3\n');
  await writeFile(join(dir.path, `${u(4)}.active`), '');
  // Torn by a crash mid-write: whole records kept, the torn tail cut; nothing whole: removed.
  await writeFile(join(dir.path, `${u(5)}.active`), 't5\ntorn-rec');
  await writeFile(join(dir.path, `${u(6)}.active`), 'torn-only');
  // An interrupted repair left both: the .active original wins.
  await writeFile(join(dir.path, `${u(7)}.active`), 'r7\npart');
  await writeFile(join(dir.path, `${u(7)}.flushed`), 'r');
  await writeFile(join(dir.path, 'notes.txt'), 'not a segment');
  // Oldest first by mtime: 3, then 2, then 1.
  for (const [n, ext, s] of [
    [3, 'flushed', 100],
    [2, 'pending', 200],
    [1, 'active', 300],
    [5, 'active', 400],
    [7, 'active', 500],
  ] as const)
    await utimes(join(dir.path, `${u(n)}.${ext}`), s, s);
  const { log } = await openLog(new RealFileSystem(), dir.path);
  t.after(() => log.close());
  assert.deepEqual((await readdir(dir.path)).sort(), [
    `${u(1)}.flushed`,
    `${u(2)}.flushed`,
    `${u(3)}.flushed`,
    `${u(5)}.flushed`,
    `${u(7)}.flushed`,
    'LOCK',
    'notes.txt',
  ]);
  const got: string[] = [];
  for (let c = await log.next(); c; c = await log.next()) got.push(await text(log.read(c.id).stream));
  assert.deepEqual(got, ['f3\n', 'p2\n', 'a1\n', 't5\n', 'r7\n']);
});

test('close returns claims to flushed, flushes leftovers, releases the lock; later calls are refused', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const { log } = await openLog(new RealFileSystem(), dir.path);
  await log.flush(await writeSegment(log, 'a\n'), 'close');
  assert.ok(await log.next());
  await writeSegment(log, 'left\n'); // never flushed by its writer
  await log.close();
  const names = await readdir(dir.path);
  assert.equal(names.length, 2);
  assert.ok(names.every((n) => n.endsWith('.flushed')));
  await assert.rejects(log.next(), { code: 'OKLOG_ERR_SHUTTING_DOWN', status: 503 });
  const again = await openLog(new RealFileSystem(), dir.path);
  assert.equal(again.log.stats().flushed.count, 2);
  await again.log.close();
});

test('whenCommitted resolves on the commit of that segment only, and can be cancelled', async (t) => {
  const dir = await tempDir();
  t.after(dir.cleanup);
  const { log } = await openLog(new VirtualFileSystem(), dir.path);
  t.after(() => log.close());
  const a = await writeSegment(log, 'a\n', 1);
  const b = await writeSegment(log, 'b\n', 2);
  const wa = log.whenCommitted(a.id);
  const wb = log.whenCommitted(b.id);
  let aDone = false;
  void wa.promise.then(() => {
    aDone = true;
  });
  await log.flush(a, 'close');
  await log.flush(b, 'close');
  const ca = await log.next();
  assert.ok(ca);
  await text(log.read(ca.id).stream);
  await log.fail(ca.id);
  await new Promise((r) => setImmediate(r));
  assert.equal(aDone, false, 'failing is not committing');
  const again = await log.next();
  assert.ok(again);
  await text(log.read(again.id).stream);
  await log.commit(again.id);
  await wa.promise;
  wb.cancel();
});

test('nop filesystem: writes succeed, nothing is ever offered for consumption', async (t) => {
  const { log } = await openLog(new NopFileSystem(), '/nowhere');
  t.after(() => log.close());
  await log.flush(await writeSegment(log, 'a\n'), 'close');
  assert.equal(await log.next(), null);
});

test('goTime formats like Go time.Time.String() in UTC', () => {
  assert.equal(goTime(Date.UTC(2024, 0, 2, 3, 4, 5, 120)), '2024-01-02 03:04:05.12 +0000 UTC');
  assert.equal(goTime(Date.UTC(2024, 0, 2, 3, 4, 5)), '2024-01-02 03:04:05 +0000 UTC');
});
