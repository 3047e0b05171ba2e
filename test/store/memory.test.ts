// Memory of real `oklog store` processes under query load (DESIGN.md §8: node RSS under 300 MiB),
// on the paths process.test.ts does not cover: many concurrent slow readers on the scan workers
// (the node-wide read-ahead budget), a query queued behind them still answered, 503 with
// Retry-After when too many wait, and a large selective result merged from two nodes (fan-out
// merge + worker scans). RSS is read from /proc (VmRSS, VmHWM) of the node process.
import assert from 'node:assert/strict';
import { copyFile, readdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { MemoryBudget, QueryBusyError } from '../../node/store/budget.ts';
import { encodeTime } from '../../shared/ulid.ts';
import { type Proc, tempDir, waitFor, watchMemory } from '../helpers/index.ts';
import { iso, line, startSegmentStore, T0, ulidAt } from './helpers.ts';

const MiB = 2 ** 20;
const procs: Proc[] = [];
const dirs: { cleanup: () => Promise<void> }[] = [];
after(async () => {
  for (const p of procs) await p.kill('SIGKILL');
  for (const d of dirs) await d.cleanup();
});

/** `count` segments of `segMiB` MiB of 200-byte records, one per ms from `startMs`. */
async function writeSegments(dir: string, startMs: number, count: number, segMiB: number): Promise<number> {
  const perSeg = Math.floor((segMiB * MiB) / 200);
  const pad = 'p'.repeat(200 - line(T0, 0, ' 00000000').length);
  // Every record is the same template with its own ULID time and number written in: hundreds of
  // MiB in about a second.
  const template = Buffer.from(line(startMs, 0, `${pad} 00000000`), 'latin1');
  for (let s = 0; s < count; s++) {
    const buf = Buffer.allocUnsafe(perSeg * 200);
    buf.fill(template);
    for (let i = 0; i < perSeg; i++) {
      const n = s * perSeg + i;
      encodeTime(startMs + n, buf, i * 200);
      buf.write(String(n).padStart(8, '0'), i * 200 + 191, 'latin1');
    }
    const lo = ulidAt(startMs + s * perSeg);
    const hi = ulidAt(startMs + s * perSeg + perSeg - 1);
    await writeFile(join(dir, `${lo}-${hi}.flushed`), buf);
  }
  return count * perSeg;
}

async function startStore(dir: string, extra: string[] = []) {
  const node = await startSegmentStore(dir, extra);
  procs.push(node.proc);
  return node;
}

/** A reader that takes `bytes` every `everyMs` (a slow client), or none (`bytes` 0). */
function slowReader(url: string, bytes: number, everyMs = 200) {
  let got = 0;
  let status = 0;
  let done = false;
  let timer: NodeJS.Timeout | undefined;
  const req = request(url, (res) => {
    status = res.statusCode ?? 0;
    res.pause();
    if (bytes > 0)
      timer = setInterval(() => {
        let n = 0;
        for (let c = res.read(); c !== null; c = n < bytes ? res.read() : null) {
          n += (c as Buffer).length;
          got += (c as Buffer).length;
        }
      }, everyMs);
    res.on('end', () => {
      done = true;
    });
    res.on('error', () => {});
  });
  req.on('error', () => {});
  req.end();
  return {
    got: () => got,
    status: () => status,
    done: () => done,
    close: () => {
      clearInterval(timer);
      req.destroy();
    },
  };
}

test('MemoryBudget: first come first served, smaller leases, force, abort, a full line refused', async () => {
  const b = new MemoryBudget(100, 2);
  const a = b.tryTake(60);
  assert.ok(a);
  assert.equal(b.tryTake(50), null, 'does not fit');
  const reserved = b.tryTake(80, true);
  assert.ok(reserved, 'a floor-size lease may use the reserve (half the capacity)');
  const first = b.take(50);
  const second = b.take(10);
  assert.equal(b.tryTake(1), null, 'nobody overtakes the line');
  assert.throws(() => b.admit(), QueryBusyError);
  await assert.rejects(b.take(10), { code: 'OKLOG_ERR_QUERY_BUSY' });
  a.release();
  reserved?.release();
  const l1 = await first;
  const l2 = await second;
  assert.equal(b.inUse, 60);
  const f = b.force(100);
  assert.equal(b.inUse, 160, 'a running query may go over');
  const ac = new AbortController();
  const waiting = b.take(10, ac.signal);
  ac.abort();
  assert.equal(await waiting, null);
  assert.equal(b.waiting, 0);
  for (const l of [l1, l2, f]) l?.release();
  l1?.release(); // idempotent
  assert.equal(b.inUse, 0);
  assert.equal(b.tryTake(500)?.bytes, 100, 'clamped to the capacity');
});

test('many concurrent slow readers on the scan workers: RSS stays bounded, a simple query is served', {
  timeout: 120_000,
}, async (t) => {
  const dir = await tempDir('oklog-mem-slow-');
  dirs.push(dir);
  await writeSegments(dir.path, T0, 4, 32);
  await writeFile(
    join(dir.path, `${ulidAt(T0 + 50_000_000)}-${ulidAt(T0 + 50_000_000)}.flushed`),
    line(T0 + 50_000_000, 0, 'pppp alone'),
  );
  const node = await startStore(dir.path);
  const pid = node.proc.pid;
  // The workers loaded, then the baseline.
  await (await fetch(`${node.api}/store/_query?from=${iso(T0)}&to=${iso(T0 + 10)}&q=pppp`)).text();
  await new Promise((r) => setTimeout(r, 500));
  const memory = await watchMemory(pid, 100);
  const { before } = memory;
  const readers = Array.from({ length: 30 }, () =>
    slowReader(`${node.api}/store/_query?from=${iso(T0)}&to=${iso(T0 + 10_000_000)}&q=pppp`, 64 * 1024),
  );
  try {
    await waitFor(() => readers.every((r) => r.got() > 0), 'every reader receiving', 20_000);
    await new Promise((r) => setTimeout(r, 3000));
    const tq = performance.now();
    const simple = await fetch(
      `${node.api}/store/_query?from=${iso(T0 + 50_000_000)}&to=${iso(T0 + 50_000_001)}&q=alone`,
      {
        signal: AbortSignal.timeout(10_000),
      },
    );
    assert.equal((await simple.text()).split('\n').filter(Boolean).length, 1);
    assert.ok(performance.now() - tq < 3000, 'a simple query is served beside them');
  } finally {
    for (const r of readers) r.close();
    memory.stop();
  }
  const peak = memory.peak();
  const growth = peak - before.rss;
  t.diagnostic(
    `RSS ${(before.rss / MiB).toFixed(0)} MiB before, peak ${(peak / MiB).toFixed(0)} MiB with 30 slow readers`,
  );
  // Unbounded, this was +700 MiB (30 readers: 101 → 821 MiB).
  assert.ok(growth < 180 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
  assert.ok(peak < 300 * MiB, `peak RSS ${(peak / MiB).toFixed(0)} MiB`);
});

test('a tight query budget: queries queue and are answered; too many waiting get 503 with Retry-After', {
  timeout: 120_000,
}, async () => {
  const dir = await tempDir('oklog-mem-queue-');
  dirs.push(dir);
  const records = await writeSegments(dir.path, T0, 2, 8);
  const node = await startStore(dir.path, ['-store.query-memory', String(2 * MiB)]);
  const url = `${node.api}/store/_query?from=${iso(T0)}&to=${iso(T0 + 10_000_000)}&q=pppp`;
  const waiting = async () =>
    Number(
      /^oklog_store_query_memory_waiting (\d+)$/m.exec(
        await (await fetch(`${node.api}/metrics`)).text(),
      )?.[1],
    );
  // Clients that never read hold their read-ahead: open them until the next one has to wait.
  const holders: ReturnType<typeof slowReader>[] = [];
  const waiters: ReturnType<typeof slowReader>[] = [];
  try {
    while ((await waiting()) === 0) {
      assert.ok(holders.length < 40, 'the budget is bounded');
      holders.push(slowReader(url, 0));
      await waitFor(() => holders[holders.length - 1].status() === 200, 'answering');
      await new Promise((r) => setTimeout(r, 100));
    }
    holders.pop()?.close(); // the one waiting leaves the line
    await waitFor(async () => (await waiting()) === 0, 'line empty');
    // First in line: a reader that reads everything, once it is its turn.
    let lines = 0;
    const queued = new Promise<void>((resolve, reject) => {
      const req = request(url, (res) => {
        res.on('data', (d: Buffer) => {
          for (let i = d.indexOf(10); i >= 0; i = d.indexOf(10, i + 1)) lines++;
        });
        res.on('end', resolve);
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    await waitFor(async () => (await waiting()) === 1, 'it waits while the budget is held');
    assert.equal(lines, 0);
    for (let i = 0; i < 63; i++) waiters.push(slowReader(url, 0));
    await waitFor(async () => (await waiting()) === 64, 'the line is full');
    // The next one is refused at once.
    const busy = await fetch(url, { signal: AbortSignal.timeout(5000) });
    assert.equal(busy.status, 503);
    assert.equal(busy.headers.get('retry-after'), '1');
    assert.match(await busy.text(), /retry shortly/);
    // The holders go: the first in line gets its turn and its whole answer.
    for (const h of holders) h.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      queued,
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error('queued query not answered')), 30_000);
      }),
    ]).finally(() => clearTimeout(timer));
    assert.equal(lines, records);
    const m = await (await fetch(`${node.api}/metrics`)).text();
    assert.match(m, /^oklog_store_query_busy_total 1$/m);
  } finally {
    for (const h of holders) h.close();
    for (const w of waiters) w.close();
  }
});

test('a large selective result merged from two nodes: RSS does not grow with it on either', {
  timeout: 120_000,
}, async (t) => {
  const da = await tempDir('oklog-mem-fan-a-');
  const db = await tempDir('oklog-mem-fan-b-');
  dirs.push(da, db);
  // The same records on both nodes (replicas): the fan-out merges them and drops the copies.
  // 256 MiB: more than either node may grow by (176 MiB), so a node that held the result fails.
  const records = await writeSegments(da.path, T0, 4, 64);
  for (const f of await readdir(da.path)) await copyFile(join(da.path, f), join(db.path, f));
  const b = await startStore(db.path);
  const a = await startStore(da.path, ['-peer', `127.0.0.1:${b.ports.cluster}`]);
  await waitFor(
    async () =>
      (await fetch(`${a.api}/store/query?from=${iso(0)}&to=${iso(0)}`, { method: 'HEAD' })).headers.get(
        'x-oklog-nodes-queried',
      ) === '2',
    'both nodes in the fan-out',
    30_000,
  );
  const url = `${a.api}/store/query?from=${iso(T0)}&to=${iso(T0 + 10_000_000)}&q=${'p'.repeat(20)}`;
  await (await fetch(`${a.api}/store/query?from=${iso(T0)}&to=${iso(T0 + 10)}&q=pppp`)).text();
  await new Promise((r) => setTimeout(r, 500));
  const memory = [await watchMemory(a.proc.pid, 100), await watchMemory(b.proc.pid, 100)];
  const before = memory.map((m) => m.before);
  let lines = 0;
  let bytes = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      const req = request(url, (res) => {
        assert.equal(res.statusCode, 200);
        res.on('data', (d: Buffer) => {
          bytes += d.length;
          for (let i = d.indexOf(10); i >= 0; i = d.indexOf(10, i + 1)) lines++;
          if (Math.random() < 0.02) {
            res.pause(); // a reader that lags now and then: backpressure all the way to the nodes
            setTimeout(() => res.resume(), 5);
          }
        });
        res.on('end', resolve);
        res.on('error', reject);
      });
      req.on('error', reject);
      req.setTimeout(90_000, () => req.destroy(new Error('query too slow')));
      req.end();
    });
  } finally {
    for (const m of memory) m.stop();
  }
  const peak = memory.map((m) => m.peak());
  assert.equal(lines, records, 'each record once');
  for (const [i, name] of ['merging node', 'other node'].entries()) {
    const growth = peak[i] - before[i].rss;
    t.diagnostic(
      `${name}: RSS ${(before[i].rss / MiB).toFixed(0)} MiB before, peak ${(peak[i] / MiB).toFixed(0)} MiB for a ${(bytes / MiB).toFixed(0)} MiB result`,
    );
    // Bounded, not zero: V8's heap and the worker isolates grow with the churn up to a point (about
    // 80 MiB for a 128 MiB result, 130 for 512 MiB, measured), whatever the result's size.
    assert.ok(growth < 176 * MiB, `${name}: peak RSS grew by ${(growth / MiB).toFixed(0)} MiB`);
  }
});
