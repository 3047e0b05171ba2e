// A node's own query (LocalQuery) against the node-wide read-ahead budget: what a file split
// across the scan workers may buffer, and a query admitted before its answer started that meets
// a full waiting line when it takes its first lease.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { RealFileSystem } from '../../node/fs/index.ts';
import { MemoryBudget } from '../../node/store/budget.ts';
import { LocalQuery, type LocalQueryOptions } from '../../node/store/query.ts';
import { compileScanFilter, type QueryParams } from '../../node/store/query-params.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { receiveSegment } from '../../node/store/replicate.ts';
import { type PoolScanJob, type PoolScanOptions, ScanPool } from '../../node/store/scan-pool.ts';
import type { StoreLog } from '../../node/store/store-log.ts';
import { tempDir } from '../helpers/index.ts';
import { line, plainQuery, silent, T0 } from './helpers.ts';

/** The scan pool, noting every scan job it is given. */
class SpyPool extends ScanPool {
  jobs: PoolScanJob[] = [];
  override scan(job: PoolScanJob, opts?: PoolScanOptions) {
    this.jobs.push(job);
    return super.scan(job, opts);
  }
}

const COUNT = 20_000;
let dir: { path: string; cleanup: () => Promise<void> };
let log: StoreLog;
let pool: SpyPool;
let data: string;
let size: number;

before(async () => {
  dir = await tempDir('oklog-local-query-');
  log = await openStoreLog({ fs: new RealFileSystem(), root: dir.path, logger: silent });
  const parts: string[] = [];
  for (let i = 0; i < COUNT; i++) parts.push(line(T0 + i, 0, `${'x'.repeat(80)} rec ${i}`));
  data = parts.join('');
  size = Buffer.byteLength(data);
  assert.ok(
    (
      await receiveSegment(
        log,
        (async function* () {
          yield Buffer.from(data);
        })(),
      )
    ).entry,
  );
  pool = new SpyPool(silent, 2);
  await pool.prewarm();
});
after(async () => {
  await pool.close();
  await log.close();
  await dir.cleanup();
});

const params: QueryParams = plainQuery(T0, T0 + COUNT, 'rec');

function localQuery(opts: Partial<LocalQueryOptions>): LocalQuery {
  return new LocalQuery(log, compileScanFilter(params), params, {
    concurrency: 4,
    bufferSize: 1 << 20,
    ...opts,
  });
}

async function text(q: LocalQuery): Promise<string> {
  const out: Buffer[] = [];
  for await (const c of q.records()) out.push(c);
  return Buffer.concat(out).toString();
}

test('a file split across the workers shares its lease: its parts hold no more than one scan', async () => {
  const budget = new MemoryBudget(32 << 20);
  pool.jobs = [];
  const bufferSize = 1 << 20;
  // Split in as many parts as there are workers (two).
  const q = localQuery({ pool, budget, bufferSize, splitBytes: Math.floor(size / 3) });
  q.admit();
  assert.equal(await text(q), data);
  assert.equal(pool.jobs.length, 2, 'the file was split');
  const credit = pool.jobs.reduce((n, j) => n + j.budget, 0);
  const chunks = pool.jobs.reduce((n, j) => n + j.chunk, 0);
  // The lease was taken for one scan of full buffers (the node is quiet).
  assert.ok(budget.peak >= bufferSize, `leased ${budget.peak}`);
  assert.ok(
    credit <= bufferSize,
    `the parts may run ${credit} bytes ahead, their lease is for ${bufferSize}`,
  );
  assert.ok(chunks <= bufferSize, `the parts read ${chunks}-byte chunks between them`);
  assert.equal(budget.inUse, 0, 'the lease is given back');
});

test('a query admitted before its answer started waits its turn when the line has filled since', async () => {
  const budget = new MemoryBudget(1 << 20, 1);
  const q = localQuery({ pool, budget });
  q.admit(); // the line is empty: admitted
  // Then, before it takes its first read-ahead (a fan-out's local answer does so only once every
  // node has sent its headers), the budget is used up and the line fills.
  const held = budget.force(budget.capacity + budget.reserve);
  const other = budget.take(64 << 10);
  assert.equal(budget.waiting, 1);
  const answer = text(q);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(budget.waiting, 2, 'the admitted query waits in line, it is not refused');
  held.release();
  (await other)?.release();
  assert.equal(await answer, data);
  assert.equal(budget.inUse, 0);
  // A query arriving at a full line is still refused at admit(), before its response starts.
  const held2 = budget.force(budget.capacity + budget.reserve);
  const other2 = budget.take(64 << 10);
  const late = localQuery({ pool, budget });
  assert.throws(() => late.admit(), { code: 'OKLOG_ERR_QUERY_BUSY' });
  late.close();
  held2.release();
  (await other2)?.release();
});
