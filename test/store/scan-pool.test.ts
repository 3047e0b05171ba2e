// The scan pool's workers after a scan is cancelled while its worker is inside one expensive
// record: the worker cannot read the cancel until the record is done, so the pool must neither
// place new scans behind it nor leave it burning a core once nothing is left to watch.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type PoolScanJob, ScanPool } from '../../node/store/scan-pool.ts';
import { MAX_ULID, ZERO_ULID } from '../../shared/ulid.ts';
import { tempDir } from '../helpers/index.ts';
import { line, silent, T0 } from './helpers.ts';

let dir: { path: string; cleanup: () => Promise<void> };
let huge: string;
let plain: string;
let plainHits: number;

before(async () => {
  dir = await tempDir('oklog-scan-pool-');
  // One 1 MiB record: under EVIL (at the regex caps) it takes seconds to match.
  huge = join(dir.path, 'huge');
  await writeFile(huge, line(T0, 0, 'p'.repeat(1 << 20)));
  let body = '';
  for (let i = 0; i < 1000; i++) body += line(T0 + i, 0, i % 10 === 0 ? `hit ${i}` : `miss ${i}`);
  plain = join(dir.path, 'plain');
  await writeFile(plain, body);
  plainHits = 100;
});
after(async () => {
  await dir.cleanup();
});

const EVIL = `(${Array.from({ length: 60 }, (_, i) => `p${i}`).join('|')})*${'(.*)'.repeat(31)}QQQ`;

function job(path: string, q: string, regex: boolean): PoolScanJob {
  return {
    path: () => path,
    params: { q, regex, topic: undefined, from: ZERO_ULID, to: MAX_ULID },
    low: ZERO_ULID,
    high: MAX_ULID,
    chunk: 64 << 10,
    budget: 64 << 10,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CPU milliseconds this process (every thread, workers included) uses during `ms`. */
async function cpuDuring(ms: number): Promise<number> {
  const c0 = process.cpuUsage();
  await sleep(ms);
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1000;
}

/**
 * Starts a scan of the huge record and gives the worker `ms` to get inside it (it reads the
 * record's 16 chunks in a few milliseconds, then the regex takes seconds on it).
 */
async function stuckScan(pool: ScanPool, ms = 400) {
  const scan = pool.scan(job(huge, EVIL, true));
  const first = scan.next(); // pending: the record takes seconds
  await sleep(ms);
  return { scan, first };
}

test('a cancelled scan stuck in one record: the next scan is answered at once, not after the watchdog', async () => {
  // The stall watchdog alone would free the worker only after stallMs.
  const pool = new ScanPool(silent, 1, { stallMs: 5000 });
  try {
    await pool.prewarm();
    const { scan, first } = await stuckScan(pool);
    await scan.return();
    assert.deepEqual(await first, { value: undefined, done: true });
    const t0 = performance.now();
    const n = await pool.count(job(plain, 'hit', false));
    const took = performance.now() - t0;
    assert.equal(n, plainHits);
    assert.ok(took < 1500, `the plain scan took ${took.toFixed(0)} ms (stallMs is 5000)`);
    assert.equal(pool.stalls, 0, 'not a stall: nothing failed');
    assert.equal(pool.abandonedStops, 1);
    assert.equal(pool.activeScans, 0);
  } finally {
    await pool.close();
  }
});

test('a cancelled scan stuck in one record, no scan after it: the worker is stopped, CPU goes idle', async () => {
  const pool = new ScanPool(silent, 1, { stallMs: 10_000 });
  try {
    await pool.prewarm();
    const { scan } = await stuckScan(pool);
    assert.ok((await cpuDuring(300)) > 200, 'the worker is busy with the record');
    await scan.return();
    await sleep(400); // the watchdog looks every 50 ms and acts after 100 ms
    const cpu = await cpuDuring(600);
    assert.ok(cpu < 200, `${cpu.toFixed(0)} ms of CPU in 600 ms after the cancel: the worker still runs`);
    assert.equal(pool.abandonedStops, 1);
    // The pool goes on with a fresh worker.
    assert.equal(await pool.count(job(plain, 'hit', false)), plainHits);
  } finally {
    await pool.close();
  }
});

test('a scan placed right after a cancel goes to a free worker, not behind the abandoned record', async () => {
  const pool = new ScanPool(silent, 2, { stallMs: 10_000 });
  try {
    await pool.prewarm();
    // Cancelled before the watchdog has seen the worker make no step for two of its rounds
    // (which would also keep new scans off it): only the cancel tells the worker is stuck.
    const { scan } = await stuckScan(pool, 40);
    await scan.return();
    // Placed before the watchdog can stop the stuck worker: on it, the scan would wait and then
    // be resumed on a fresh worker when it is stopped.
    const counted = pool.count(job(plain, 'hit', false));
    assert.equal(await counted, plainHits);
    await sleep(300);
    assert.equal(pool.abandonedStops, 1, 'the stuck worker was stopped');
    assert.equal(pool.resumed, 0, 'the new scan never ran on it');
  } finally {
    await pool.close();
  }
});
