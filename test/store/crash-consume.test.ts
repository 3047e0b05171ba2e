// kill -9 in the middle of consume and replicate, with real processes: after a restart on the same
// data directories every record the ingester had written is queryable exactly once, in order.
//
// 1. One `oklog ingeststore`: a backlog of numbered records is built with the consumer off, then
//    the node is restarted with its consumer on and killed (SIGKILL to its process group) at
//    moments of a transaction, each seen on disk as it happens: a claim taken (a `.pending` file at
//    the ingester), an upload half-written (an `.active` file with data in the store), a batch
//    stored but not yet committed (a new `.flushed` file in the store), and once more while a
//    compaction merges the copies those kills left (a `.reading` file). A last restart drains all.
// 2. One `oklog ingest` and two `oklog store` nodes, replication factor 2: the store that consumes
//    is killed while it uploads to the other store, and again right after the other store saved
//    its copy; restarted, it finishes, and each store holds every record.
// 3. The same ingeststore stopped cleanly (SIGTERM) while it consumes, three times: after each
//    stop no record is both in a store file and back at the ingester (the consumers stop before
//    the ingest log hands its claims back), and once drained the store files hold each record
//    exactly once (counted in the files: compaction would hide a duplicate from a query).
//
// Besides the query, the directories are checked: start-up recovery leaves none of the files a
// kill left half-done (`.active`, `.reading`), the surviving peer deletes an upload cut short,
// nothing is quarantined, and a `.bad` file (a torn tail recovery sets aside) holds only fragments
// of records that are stored anyway. Nothing here depends on timing: every wait is for a state.
import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { nodePorts, type Proc, sendTcp, sleep, startOklog, tempDir, waitFor } from '../helpers/index.ts';

const RECORD = /^([0-9A-HJKMNP-TV-Z]{26}) default line-(\d{7}) /;
const FILLER = 'x'.repeat(48);

/** Numbered lines 1..count, each `line-NNNNNNN <filler>\n`. */
function numbered(count: number): Buffer {
  const parts: string[] = [];
  for (let i = 1; i <= count; i++) parts.push(`line-${String(i).padStart(7, '0')} ${FILLER}\n`);
  return Buffer.from(parts.join(''));
}

interface IngestStats {
  segments: Record<'active' | 'flushed' | 'pending', { count: number; bytes: number }>;
  written: { records: number };
}

async function ingestStats(api: string): Promise<IngestStats> {
  const r = await fetch(`${api}/ingest/stats`);
  if (r.status !== 200) throw new Error(`/ingest/stats: ${r.status}`);
  return (await r.json()) as IngestStats;
}

/** The fast-port records are acknowledged once written: wait until all are, and flushed. */
async function waitBacklog(api: string, total: number): Promise<void> {
  await waitFor(
    async () => {
      const s = await ingestStats(api);
      return s.written.records === total && s.segments.active.count === 0;
    },
    'every record written and flushed at the ingester',
    30_000,
  );
}

/** Waits until the ingester holds no segment any more (everything committed by a store). */
async function waitDrained(api: string): Promise<void> {
  await waitFor(
    async () => {
      const s = await ingestStats(api);
      return s.segments.flushed.count + s.segments.pending.count + s.segments.active.count === 0;
    },
    'the ingester drained',
    30_000,
  );
}

/** Names in `dir` grouped by extension (`LOCK` and the quarantine folder under their names). */
async function filesByExt(dir: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const ext = name.includes('.') ? name.slice(name.lastIndexOf('.')) : name;
    out.set(ext, [...(out.get(ext) ?? []), name]);
  }
  return out;
}

const count = (files: Map<string, string[]>, ext: string) => files.get(ext)?.length ?? 0;
const segmentCount = (files: Map<string, string[]>) =>
  count(files, '.flushed') + count(files, '.pending') + count(files, '.active');

/** A file's size, or 0 when it is gone (renamed or deleted since it was listed). */
const sizeOf = (path: string) =>
  stat(path).then(
    (s) => s.size,
    () => 0,
  );

async function describeDir(dir: string): Promise<string> {
  const parts: string[] = [];
  for (const [ext, names] of await filesByExt(dir)) {
    let bytes = 0;
    for (const n of names) bytes += await sizeOf(join(dir, n));
    parts.push(ext === '.active' ? `${ext}:${names.length} (${bytes} B)` : `${ext}:${names.length}`);
  }
  return parts.join(' ');
}

/** Total bytes of the `.active` files in `dir` (0 when there is none). */
async function activeBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of (await filesByExt(dir)).get('.active') ?? []) n += await sizeOf(join(dir, f));
  return n;
}

/**
 * Polls `cond` back to back (readdir and stat only; nothing asks the node) until it holds. The
 * kill follows within a millisecond or so, so the node dies in the state that was seen.
 */
async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

interface Moment {
  name: string;
  /** Called once the node is up; returns the condition to kill at. */
  arm(): Promise<() => Promise<boolean>>;
}

/** The store's half-done files after a kill: the next start-up must deal with each of them. */
async function leftovers(storeDir: string): Promise<string[]> {
  const s = await filesByExt(storeDir);
  return [...(s.get('.active') ?? []), ...(s.get('.reading') ?? [])];
}

/**
 * The restarted node's recovery handled every file the kill left half-done: each is named in a
 * recovery log line (`.active`: recovered, rewritten or removed when empty; `.reading`: reset),
 * and no `.active` of them is on disk any more (their UUID names are never used again; a
 * `.reading` name may legitimately come back with the next compaction).
 */
async function assertRecovered(proc: Proc, storeDir: string, left: string[]): Promise<void> {
  for (const f of left)
    await waitFor(() => proc.stderr().includes(`"file":"${f}"`), `the recovery of ${f} in the node's log`);
  const now = new Set(await readdir(storeDir));
  for (const f of left) if (f.endsWith('.active')) assert.ok(!now.has(f), `store recovery left ${f} behind`);
}

/** Whether any two `LOW-HIGH.flushed` segments overlap (so an overlapping compaction will run). */
async function overlapping(storeDir: string): Promise<boolean> {
  const ranges = ((await filesByExt(storeDir)).get('.flushed') ?? [])
    .map((n) => n.slice(0, -'.flushed'.length).split('-'))
    .sort((x, y) => (x[0] < y[0] ? -1 : 1));
  let high = '';
  for (const [low, hi] of ranges) {
    if (low <= high) return true;
    if (hi > high) high = hi;
  }
  return false;
}

/**
 * `GET /store/query` (or the node-local `/store/_query`) over the last hour: ULIDs must strictly
 * increase (duplicates are merged away); returns the record numbers in order and the raw lines.
 */
async function query(api: string, path = '/store/query'): Promise<{ numbers: number[]; lines: string[] }> {
  const from = new Date(Date.now() - 3_600_000).toISOString();
  const to = new Date(Date.now() + 1000).toISOString();
  const r = await fetch(`${api}${path}?from=${from}&to=${to}`);
  assert.equal(r.status, 200, `${path}: every store node answered`);
  const lines = (await r.text()).split('\n');
  assert.equal(lines.pop(), '', 'the body ends with a newline');
  const numbers: number[] = [];
  let last = '';
  for (const l of lines) {
    const m = RECORD.exec(l);
    assert.ok(m, `unexpected record ${l.slice(0, 80)}`);
    assert.ok(m[1] > last, `ULIDs not strictly increasing at ${l.slice(0, 40)}`);
    last = m[1];
    numbers.push(Number(m[2]));
  }
  return { numbers, lines };
}

/** Records 1..total, each exactly once and in order; names the first offenders otherwise. */
function assertExactlyOnceInOrder(numbers: number[], total: number, where: string): void {
  const seen = new Set<number>();
  const dups: number[] = [];
  for (const n of numbers) {
    if (seen.has(n)) dups.push(n);
    seen.add(n);
  }
  assert.deepEqual(dups.slice(0, 10), [], `${where}: ${dups.length} records more than once`);
  const lost: number[] = [];
  for (let i = 1; i <= total && lost.length < 10; i++) if (!seen.has(i)) lost.push(i);
  assert.deepEqual(lost, [], `${where}: ${total - seen.size} records lost`);
  assert.equal(numbers.length, total, where);
  const at = numbers.findIndex((n, i) => n !== i + 1);
  assert.equal(at, -1, `${where}: out of order at position ${at}`);
}

/**
 * What a store directory may hold once its node stopped cleanly: segments, `.bad` files, nothing
 * in quarantine. Each `.bad` line must be a (torn) prefix of a stored record: nothing was set
 * aside that is not stored anyway. Returns the number of `.bad` files.
 */
async function assertStoreDirClean(dir: string, stored: string[]): Promise<number> {
  const files = await filesByExt(dir);
  for (const [ext, names] of files)
    assert.ok(['.flushed', '.bad', 'LOCK', 'quarantine'].includes(ext), `unexpected ${names[0]} in ${dir}`);
  assert.ok(count(files, '.flushed') > 0, `segments in ${dir}`);
  assert.deepEqual(await readdir(join(dir, 'quarantine')).catch(() => []), [], 'nothing quarantined');
  const bad = files.get('.bad') ?? [];
  for (const name of bad) {
    for (const frag of (await readFile(join(dir, name), 'latin1')).split('\n')) {
      if (frag === '') continue;
      const i = stored.findIndex((l) => l.startsWith(frag));
      assert.ok(i >= 0, `${name} holds data that is not stored: ${frag.slice(0, 80)}`);
    }
  }
  return bad.length;
}

// -------------------------------------------------------------------------------------------------

const TOTAL = 200_000;

/** Small ingest segments and 2 MiB batches: about ten transactions, so kills land inside one. */
function ingeststoreArgs(dir: string, consumers: number): string[] {
  return [
    ...['-ingest.path', join(dir, 'ingest'), '-store.path', join(dir, 'store')],
    ...['-ingest.segment-flush-size', '131072', '-ingest.segment-flush-age', '100ms'],
    ...['-store.segment-consumers', String(consumers)],
    ...['-store.segment-target-size', '2097152', '-store.segment-target-age', '200ms'],
    ...['-store.segment-delay', '10ms'],
  ];
}

/**
 * An ingeststore's data directories (removed after test `t`) and ports: `start` (re)starts it with
 * `consumers` segment consumers, and a node still running when `t` ends is killed.
 */
async function ingeststore(t: TestContext, prefix: string) {
  const dir = await tempDir(prefix);
  const ports = await nodePorts();
  const lab = {
    ingestDir: join(dir.path, 'ingest'),
    storeDir: join(dir.path, 'store'),
    node: null as Awaited<ReturnType<typeof startOklog>> | null,
    async start(consumers: number) {
      lab.node = await startOklog('ingeststore', ingeststoreArgs(dir.path, consumers), { ports });
      return lab.node;
    },
    /** The backlog: `total` records written at the ingester (consumer off) and flushed; the node runs on. */
    async backlog(total: number) {
      const node = await lab.start(0);
      await sendTcp(ports.fast, numbered(total));
      await waitBacklog(node.api, total);
      return node;
    },
  };
  t.after(async () => {
    await lab.node?.proc.kill('SIGKILL');
    await dir.cleanup();
  });
  return lab;
}

test('kill -9 of an ingeststore mid consume/replicate: every record queryable once, in order', async (t) => {
  const lab = await ingeststore(t, 'oklog-crash-consume-');
  const { ingestDir, storeDir } = lab;

  // The backlog: every record written at the ingester (fast port, one connection) and flushed.
  await (await lab.backlog(TOTAL)).proc.kill('SIGKILL');

  const moments: Moment[] = [
    {
      name: 'claim taken',
      arm: async () => async () => count(await filesByExt(ingestDir), '.pending') > 0,
    },
    {
      name: 'upload half-written',
      arm: async () => async () => (await activeBytes(storeDir)) > 0,
    },
    {
      name: 'batch stored, not yet committed',
      arm: async () => {
        const before = count(await filesByExt(storeDir), '.flushed');
        return async () => count(await filesByExt(storeDir), '.flushed') > before;
      },
    },
    {
      // The kills above leave copies of the same records (a recovered partial upload, a batch
      // stored twice), which the overlapping compaction merges on its first tick, a second after
      // start-up (the consumer may still be draining). Without an overlap on disk (every kill
      // above landed just after a commit) this round kills at a claim instead.
      name: 'compaction in progress',
      arm: async () => {
        if (!(await overlapping(storeDir)))
          return async () => count(await filesByExt(ingestDir), '.pending') > 0;
        return async () => count(await filesByExt(storeDir), '.reading') > 0;
      },
    },
  ];
  let left: string[] = [];
  let claimsOutstanding = 0;
  for (const m of moments) {
    const node = await lab.start(1);
    await assertRecovered(node.proc, storeDir, left);
    await until(await m.arm(), m.name);
    await node.proc.kill('SIGKILL');
    left = await leftovers(storeDir);
    if (count(await filesByExt(ingestDir), '.pending') > 0) claimsOutstanding++;
    t.diagnostic(
      `killed at "${m.name}": ingest ${await describeDir(ingestDir)} | store ${await describeDir(storeDir)}`,
    );
  }
  // The consume moments are inside a transaction (a claim is taken first and settled last): the
  // dead node's ingest directory shows claims still outstanding.
  assert.ok(claimsOutstanding > 0, 'a kill left claims outstanding at the ingester');

  // Last restart: everything is consumed, then each record must be there once.
  const node = await lab.start(1);
  await assertRecovered(node.proc, storeDir, left);
  await waitDrained(node.api);
  const { numbers, lines } = await query(node.api);
  assertExactlyOnceInOrder(numbers, TOTAL, 'query');

  // A clean stop (no compaction caught half-way), then what is left on disk.
  assert.equal(await node.proc.kill('SIGTERM'), 0, 'clean shutdown');
  assert.equal(segmentCount(await filesByExt(ingestDir)), 0, 'no segment left at the ingester');
  const bad = await assertStoreDirClean(storeDir, lines);
  t.diagnostic(`after the drain: store ${await describeDir(storeDir)}; torn tails in .bad: ${bad}`);
});

// -------------------------------------------------------------------------------------------------

const TOTAL2 = 100_000;

test('kill -9 of the replicating store (factor 2) mid-replication: every record once, on both stores', async (t) => {
  const dir = await tempDir('oklog-crash-replicate-');
  const ingestDir = join(dir.path, 'ingest');
  const aDir = join(dir.path, 'store-a');
  const bDir = join(dir.path, 'store-b');
  const [ip, ap, bp] = [await nodePorts(), await nodePorts(), await nodePorts()];
  const procs: Proc[] = [];
  t.after(async () => {
    for (const p of procs) await p.kill('SIGKILL');
    await dir.cleanup();
  });
  const seed = ['-peer', `127.0.0.1:${ip.cluster}`, '-store.segment-replication-factor', '2'];

  // The ingester gives a dead consumer's claims back after 1 s (instead of a minute). Store B
  // only stores (no consumer); store A consumes and replicates to A and B.
  const [ingest, b] = await Promise.all([
    startOklog(
      'ingest',
      [
        ...['-ingest.path', ingestDir, '-ingest.segment-pending-timeout', '1s'],
        ...['-ingest.segment-flush-size', '131072', '-ingest.segment-flush-age', '100ms'],
      ],
      { ports: ip },
    ),
    startOklog('store', [...seed, '-store.path', bDir, '-store.segment-consumers', '0'], { ports: bp }),
  ]);
  procs.push(ingest.proc, b.proc);
  const aArgs = [
    ...seed,
    ...['-store.path', aDir, '-store.segment-consumers', '1', '-store.segment-delay', '10ms'],
    ...['-store.segment-target-size', '2097152', '-store.segment-target-age', '200ms'],
  ];

  // A backlog at the ingester before any consumer runs.
  await sendTcp(ip.fast, numbered(TOTAL2));
  await waitBacklog(ingest.api, TOTAL2);

  const moments: Moment[] = [
    {
      name: 'upload to B in progress',
      arm: async () => async () => count(await filesByExt(bDir), '.active') > 0,
    },
    {
      name: 'B stored its copy',
      arm: async () => {
        const before = count(await filesByExt(bDir), '.flushed');
        return async () => count(await filesByExt(bDir), '.flushed') > before;
      },
    },
  ];
  let left: string[] = [];
  for (const m of moments) {
    const a = await startOklog('store', aArgs, { ports: ap });
    procs.push(a.proc);
    await assertRecovered(a.proc, aDir, left);
    await until(await m.arm(), m.name);
    await a.proc.kill('SIGKILL');
    left = await leftovers(aDir);
    t.diagnostic(`killed A at "${m.name}": A ${await describeDir(aDir)} | B ${await describeDir(bDir)}`);
    // B lives on: the upload cut short must not stay behind as an `.active` file.
    await waitFor(async () => count(await filesByExt(bDir), '.active') === 0, 'B deleting the cut upload');
  }

  // Restarted, A gets its old claims back once the ingester's pending timeout returns them.
  const a = await startOklog('store', aArgs, { ports: ap });
  procs.push(a.proc);
  await assertRecovered(a.proc, aDir, left);
  await waitDrained(ingest.api);
  const viaB = await query(b.api);
  assertExactlyOnceInOrder(viaB.numbers, TOTAL2, 'query via B');
  assertExactlyOnceInOrder((await query(a.api)).numbers, TOTAL2, 'query via A');
  // Factor 2 with two stores: each holds every record by itself.
  assertExactlyOnceInOrder((await query(a.api, '/store/_query')).numbers, TOTAL2, 'A alone');
  assertExactlyOnceInOrder((await query(b.api, '/store/_query')).numbers, TOTAL2, 'B alone');

  for (const p of [a.proc, b.proc, ingest.proc]) assert.equal(await p.kill('SIGTERM'), 0, 'clean shutdown');
  assert.equal(segmentCount(await filesByExt(ingestDir)), 0, 'no segment left at the ingester');
  for (const [name, d] of [
    ['A', aDir],
    ['B', bDir],
  ]) {
    const bad = await assertStoreDirClean(d, viaB.lines);
    t.diagnostic(`after the drain: ${name} ${await describeDir(d)}; torn tails in .bad: ${bad}`);
  }
});

// -------------------------------------------------------------------------------------------------

/** Record numbers held by the segment files with extension `ext` in `dir` (each as often as stored). */
async function storedNumbers(dir: string, ext: string): Promise<number[]> {
  const out: number[] = [];
  for (const name of (await filesByExt(dir)).get(ext) ?? []) {
    for (const l of (await readFile(join(dir, name), 'latin1')).split('\n')) {
      const m = RECORD.exec(l);
      if (m) out.push(Number(m[2]));
    }
  }
  return out;
}

test('SIGTERM of an ingeststore mid-consume: no batch is both stored and handed back, nothing stored twice', async (t) => {
  const lab = await ingeststore(t, 'oklog-clean-stop-');
  const { ingestDir, storeDir } = lab;
  const total = 150_000;
  assert.equal(await (await lab.backlog(total)).proc.kill('SIGTERM'), 0);

  for (let round = 0; round < 3; round++) {
    const before = count(await filesByExt(storeDir), '.flushed');
    const node = await lab.start(1);
    // Stopped while consuming: a batch stored since the start, and the next one's claims taken.
    await until(
      async () =>
        count(await filesByExt(storeDir), '.flushed') > before &&
        count(await filesByExt(ingestDir), '.pending') > 0,
      'consuming',
    );
    assert.equal(await node.proc.kill('SIGTERM'), 0, 'clean shutdown');
    // What the stop left on disk, before anything could consume or compact it again: the
    // consumers stopped first, so each batch was either committed (stored, gone from the
    // ingester) or failed back (at the ingester, not stored). Never both, which a restart would
    // consume a second time.
    const stored = await storedNumbers(storeDir, '.flushed');
    const waiting = new Set(await storedNumbers(ingestDir, '.flushed'));
    const both = stored.filter((n) => waiting.has(n));
    assert.deepEqual(
      both.slice(0, 5),
      [],
      `round ${round}: ${both.length} records both stored and at the ingester`,
    );
    assert.equal(new Set(stored).size, stored.length, `round ${round}: a record stored twice`);
    assert.equal(count(await filesByExt(ingestDir), '.pending'), 0, 'no claim left outstanding');
    assert.equal(new Set(stored).size + waiting.size, total, `round ${round}: every record once, somewhere`);
    t.diagnostic(`round ${round}: ${stored.length} stored, ${waiting.size} still at the ingester`);
  }
  // Drained: the store files hold every record exactly once (counted in the files, not a query).
  const node = await lab.start(1);
  await waitDrained(node.api);
  assert.equal(await node.proc.kill('SIGTERM'), 0);
  const stored = await storedNumbers(storeDir, '.flushed');
  assert.equal(stored.length, total);
  assert.equal(new Set(stored).size, total);
});
