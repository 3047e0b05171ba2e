// The per-node query (`/store/_query`, reference §4.6): select the segments whose names overlap
// [from, to], group them into batches of transitively overlapping ranges, scan each file, k-way
// merge within a batch (dedupe by ULID) and concatenate batches in order. Unlike OK Log, scans run
// with bounded concurrency and bounded read-ahead, so neither file handles nor memory grow with
// the number of segments or the size of the result.
import { ULID_LENGTH } from '../../shared/ulid.ts';
import type { FileSystem } from '../fs/index.ts';
import type { Lease, MemoryBudget } from './budget.ts';
import { countLines, ulidBytes } from './lines.ts';
import { type MergeOptions, mergeSorted } from './merge.ts';
import { Prefetch } from './prefetch.ts';
import type { QueryStats } from './query-headers.ts';
import type { QueryParams } from './query-params.ts';
import { newScanGroup, type PoolScan, type PoolScanJob, type ScanPool } from './scan-pool.ts';
import { openChunkReader, type ScanFilter, scanSegment } from './segment-reader.ts';
import type { SegmentEntry, SegmentRef, StoreLog } from './store-log.ts';

export interface LocalQueryOptions {
  /** Most segment scans running (or holding read-ahead) at once, beyond the batch being merged. */
  concurrency: number;
  /** Read-ahead budget per scan in bytes (-store.segment-buffer-size); also the read chunk size. */
  bufferSize: number;
  signal?: AbortSignal;
  /** Scan workers (used for the real filesystem); without it files are scanned on this thread. */
  pool?: ScanPool;
  /** Files at least twice this size are split across the scan workers (default 16 MiB). */
  splitBytes?: number;
  /** The node-wide read-ahead budget (-store.query-memory); without it, no node-wide bound. */
  budget?: MemoryBudget;
  /**
   * Told how many lines were skipped as not records, and in which segments (once, when the scans
   * are done), so that those segments can be repaired.
   */
  onMalformed?: (n: number, segments: SegmentEntry[]) => void;
}

/** Groups segments sorted by LOW into batches whose ranges overlap transitively. */
export function batchSegments<T extends { entry: { low: string; high: string } }>(
  sorted: readonly T[],
): T[][] {
  const batches: T[][] = [];
  let maxHigh = '';
  for (const s of sorted) {
    const last = batches[batches.length - 1];
    if (last !== undefined && s.entry.low <= maxHigh) {
      last.push(s);
      if (s.entry.high > maxHigh) maxHigh = s.entry.high;
    } else {
      batches.push([s]);
      maxHigh = s.entry.high;
    }
  }
  return batches;
}

const READ_CHUNK_MAX = 4 << 20;
const SPLIT_BYTES = 16 << 20;
const REGEX_CHUNK = 128 << 10;
/**
 * Buffer memory a batch of overlapping files may use between them (each file's reader keeps a few
 * chunks): dozens of overlapping segments, before compaction catches up, get smaller chunks.
 */
const BATCH_MEMORY = 16 << 20;
const MIN_READ_CHUNK = 64 << 10;

/**
 * The sources one after the other (all already running). Stopping it stops them all at once,
 * even while it waits for one: an async generator here would queue its return() behind that wait,
 * which for a scan finding nothing lasts until the scan ends.
 */
class ConcatSource implements AsyncIterableIterator<Buffer> {
  private i = 0;
  private closed = false;
  constructor(private readonly sources: AsyncIterator<Buffer>[]) {}
  [Symbol.asyncIterator](): this {
    return this;
  }
  async next(): Promise<IteratorResult<Buffer>> {
    while (!this.closed && this.i < this.sources.length) {
      const r = await this.sources[this.i].next();
      if (!r.done) return r;
      this.i++;
    }
    return { value: undefined, done: true };
  }
  async return(): Promise<IteratorResult<Buffer>> {
    this.closed = true;
    await Promise.all(this.sources.map((s) => Promise.resolve(s.return?.()).catch(() => {})));
    return { value: undefined, done: true };
  }
}

/**
 * Bytes a scan with read-ahead budget `b` (and chunks of at most b) may hold, measured rather
 * than hoped: on a worker, its matches posted and not yet taken (b, plus the step that crossed
 * the budget: a chunk), the chunk its read-ahead pulled, the chunk waiting in the response's
 * buffer for a slow client, and the worker's read buffer while it scans; on this thread, the
 * chunk reader's ring (4 chunks), the read-ahead (b) and the response's chunk.
 */
function scanMemory(b: number, onWorker: boolean): number {
  return (onWorker ? 5 : 6) * b;
}

/** Reads a count-only scan to its end (it delivers nothing). */
async function drain(scan: AsyncIterator<Buffer>): Promise<void> {
  while (!(await scan.next()).done) {
    // nothing to take: next() resolves once the scan has ended
  }
}

/** Read-ahead of later batches is taken only while this much of the node budget stays free. */
const AHEAD_RESERVE = 0.25;

export class LocalQuery {
  readonly stats: QueryStats;
  private readonly refs: SegmentRef[];
  private released = false;
  /** The unit of fairness on the scan workers: all of this query's scans. */
  private readonly group = newScanGroup();
  private readonly leases = new Set<Lease>();
  private malformed = 0;
  private readonly malformedIn = new Set<SegmentEntry>();
  private pending = 0;
  /** The query has had its first read-ahead: its later batches do not queue again. */
  private admitted = false;
  /** admit() let the query in: its first batch may wait however long the line has grown since. */
  private passed = false;

  constructor(
    private readonly log: StoreLog,
    private readonly filter: ScanFilter,
    private readonly params: QueryParams,
    private readonly opts: LocalQueryOptions,
  ) {
    this.refs = params.from <= params.to ? log.select(params.from, params.to) : [];
    let bytes = 0;
    for (const r of this.refs) bytes += r.entry.size;
    this.stats = { nodesQueried: 1, segmentsQueried: this.refs.length, maxDataSetSize: bytes, errorCount: 0 };
  }

  /**
   * Throws QueryBusyError (503) when the node has too many queries waiting for read-ahead
   * memory; call before the response starts.
   */
  admit(): void {
    if (this.refs.length > 0) this.opts.budget?.admit();
    this.passed = true;
  }

  /** Lets go of the selected segments and any read-ahead still leased (idempotent). */
  close(): void {
    for (const l of this.leases) l.release();
    this.leases.clear();
    if (this.released) return;
    this.released = true;
    for (const r of this.refs) r.release();
  }

  /** A file's per-scan buffer size: -store.segment-buffer-size, shared out in a large batch. */
  private bufferFor(batchSize: number): number {
    const share = Math.floor(BATCH_MEMORY / Math.max(1, batchSize));
    return Math.max(MIN_READ_CHUNK, Math.min(this.opts.bufferSize, share));
  }

  private onWorkers(fs: FileSystem): boolean {
    return this.opts.pool !== undefined && fs.kind === 'real' && !this.filter.all;
  }

  /**
   * Read-ahead for the files of one batch, from the node budget. `ahead`: a later batch, only
   * if it fits with room to spare, else null. Otherwise the batch being merged: the full buffers
   * if they fit in a fair share, else smaller ones, else the floor size (which may use the
   * budget's reserve). The query's first batch waits its turn when even the floor does not fit
   * (null if the query is stopped meanwhile); its later batches never wait, so a query once
   * admitted always finishes, whatever waits behind it (clients that stopped reading hold their
   * leases for as long as they stay connected).
   */
  private async leaseFor(
    files: readonly SegmentRef[],
    mode: 'first' | 'next' | 'ahead',
  ): Promise<{ buffer: number; lease: Lease | null } | null> {
    const full = this.bufferFor(files.length);
    const budget = this.opts.budget;
    if (budget === undefined) return { buffer: full, lease: null };
    const worker = this.onWorkers(this.log.fs);
    const cost = (b: number) => files.length * scanMemory(b, worker);
    if (mode === 'ahead') {
      if (budget.free - cost(full) < budget.capacity * AHEAD_RESERVE) return null;
      const l = budget.tryTake(cost(full));
      return l === null ? null : this.hold(l, full);
    }
    // A fair share: no more than a quarter of the budget, than what each query holding some
    // would have if this one joined, or than half of what is free.
    const share = Math.min(budget.capacity / 4, budget.capacity / (budget.holders + 1), budget.free / 2);
    const fit = Math.floor(share / files.length / scanMemory(1, worker));
    const b = Math.min(full, fit);
    const now = b >= MIN_READ_CHUNK ? budget.tryTake(cost(b)) : null;
    if (now !== null) return this.hold(now, b);
    const floor = budget.tryTake(cost(MIN_READ_CHUNK), true);
    if (floor !== null) return this.hold(floor, MIN_READ_CHUNK);
    if (mode === 'next') return this.hold(budget.force(cost(MIN_READ_CHUNK)), MIN_READ_CHUNK);
    const later = await budget.take(cost(MIN_READ_CHUNK), this.opts.signal, this.passed);
    return later === null ? null : this.hold(later, MIN_READ_CHUNK);
  }

  private hold(lease: Lease, buffer: number): { buffer: number; lease: Lease } {
    this.leases.add(lease);
    return { buffer, lease };
  }

  private giveBack(lease: Lease | null): void {
    if (lease === null) return;
    lease.release();
    this.leases.delete(lease);
  }

  /** Gives a batch's lease back once all its `n` scans are done. */
  private releaseAfter(lease: Lease | null, n: number): () => void {
    let left = n;
    return () => {
      if (--left === 0) this.giveBack(lease);
    };
  }

  private scan(fs: FileSystem, ref: SegmentRef, buffer: number): AsyncIterator<Buffer> {
    const filter = this.filter;
    const chunk = Math.min(READ_CHUNK_MAX, buffer);
    const signal = this.opts.signal;
    const pool = this.opts.pool;
    const ulids = this.params.ulids === true;
    // Workers pay off when there is work per byte (a term, a regex, a topic); an export of every
    // record is a copy, cheaper here than copied twice across threads.
    if (pool !== undefined && this.onWorkers(fs)) {
      const opts = { signal, group: this.group, ulids };
      const scans = this.poolJobs(ref, chunk, buffer, pool).map((j) =>
        this.counted(ref.entry, pool.scan(j, opts)),
      );
      return scans.length === 1 ? scans[0] : new ConcatSource(scans);
    }
    const onMalformed = (n: number) => this.noteMalformed(ref.entry, n);
    return (async function* () {
      const reader = await openChunkReader(fs, ref.path, chunk, ref.settled);
      yield* scanSegment(reader, filter, ulidBytes(ref.entry.low), ulidBytes(ref.entry.high), {
        signal,
        ulidsOnly: ulids,
        onMalformed,
      });
    })();
  }

  /** Adds a worker scan's skipped lines to the query's count when it is done. */
  private counted(entry: SegmentEntry, scan: PoolScan): AsyncIterator<Buffer> {
    this.pending++;
    let noted = false;
    const note = () => {
      if (noted) return;
      noted = true;
      this.noteMalformed(entry, scan.malformed);
      if (--this.pending === 0) this.reportMalformed();
    };
    return {
      next: async () => {
        const r = await scan.next().catch((err: unknown) => {
          note();
          throw err;
        });
        if (r.done) note();
        return r;
      },
      return: async () => {
        await scan.return();
        note();
        return { value: undefined, done: true };
      },
    };
  }

  private noteMalformed(entry: SegmentEntry, n: number): void {
    if (n === 0) return;
    this.malformed += n;
    this.malformedIn.add(entry);
  }

  private reportMalformed(): void {
    if (this.malformed === 0) return;
    this.opts.onMalformed?.(this.malformed, [...this.malformedIn]);
    this.malformed = 0;
    this.malformedIn.clear();
  }

  /**
   * Worker scans of one file: a big file is split into byte ranges scanned on several workers at
   * once; a range owns the lines that start in it, so the ranges' outputs, concatenated in order,
   * are the file's.
   */
  private poolJobs(ref: SegmentRef, chunk: number, buffer: number, pool: ScanPool): PoolScanJob[] {
    const job: PoolScanJob = {
      path: ref.path,
      settled: ref.settled,
      params: this.params,
      low: ref.entry.low,
      high: ref.entry.high,
      // Regex chunks (slow per byte) are kept small: the read buffer is held while a chunk is
      // scanned, across time slices.
      chunk: this.params.regex ? Math.min(chunk, REGEX_CHUNK) : chunk,
      budget: buffer,
    };
    const parts = Math.min(pool.size, Math.floor(ref.entry.size / (this.opts.splitBytes ?? SPLIT_BYTES)));
    if (parts < 2) return [job];
    const step = Math.ceil(ref.entry.size / parts);
    // The file's lease is for one scan of `buffer` (scanMemory): its parts share it, each with a
    // part of the credit and chunks no larger, or a file split in four held four times its lease.
    const budget = Math.max(1, Math.floor(buffer / parts));
    return Array.from({ length: parts }, (_, k) => ({
      ...job,
      chunk: Math.min(job.chunk, budget),
      budget,
      start: k * step,
      end: k === parts - 1 ? undefined : (k + 1) * step,
    }));
  }

  /**
   * The number of records the query yields (after dedupe and `limit`), for HEAD: a segment that
   * overlaps no other is counted where it lies (by the scan workers, nothing copied), and an
   * export of a whole segment uses its known record count; overlapping segments are merged.
   * Releases the segments when done.
   */
  async count(limit: number | null): Promise<number> {
    const signal = this.opts.signal;
    let total = 0;
    try {
      for (const batch of batchSegments(this.refs)) {
        if (signal?.aborted || (limit !== null && total >= limit)) break;
        if (batch.length === 1) total += await this.countFile(batch[0]);
        else {
          for await (const chunk of this.stream([batch])) {
            total += countLines(chunk);
            if (signal?.aborted || (limit !== null && total >= limit)) break;
          }
        }
      }
    } finally {
      this.reportMalformed();
      this.close();
    }
    return limit === null ? total : Math.min(total, limit);
  }

  private async countFile(ref: SegmentRef): Promise<number> {
    const e = ref.entry;
    const whole = this.filter.all && e.low >= this.params.from && e.high <= this.params.to;
    if (whole && e.records !== null) return e.records;
    const leased = await this.leaseFor([ref], this.admitted ? 'next' : 'first');
    this.admitted = true;
    if (leased === null) return 0; // stopped while waiting
    const { buffer, lease } = leased;
    const chunk = Math.min(READ_CHUNK_MAX, buffer);
    const pool = this.opts.pool;
    let n = 0;
    try {
      if (pool !== undefined && this.log.fs.kind === 'real') {
        const opts = { signal: this.opts.signal, group: this.group };
        const scans = this.poolJobs(ref, chunk, buffer, pool).map((j) => pool.countScan(j, opts));
        try {
          await Promise.all(scans.map((sc) => drain(sc)));
        } finally {
          await Promise.all(scans.map((sc) => sc.return()));
        }
        for (const sc of scans) {
          n += sc.count;
          this.noteMalformed(e, sc.malformed);
        }
      } else {
        for await (const c of { [Symbol.asyncIterator]: () => this.scan(this.log.fs, ref, buffer) })
          n += countLines(c);
      }
    } finally {
      this.giveBack(lease);
    }
    if (whole && !this.opts.signal?.aborted) e.records = n; // known from now on
    return n;
  }

  /** Matching records, ascending by ULID, deduplicated, as chunks of whole lines. Run once. */
  async *records(): AsyncGenerator<Buffer> {
    try {
      yield* this.stream(batchSegments(this.refs));
    } finally {
      this.reportMalformed();
      this.close();
    }
  }

  private async *stream(batches: SegmentRef[][]): AsyncGenerator<Buffer> {
    const signal = this.opts.signal;
    const started: { batch: number; p: Prefetch; done: boolean }[] = [];
    let nextBatch = 0;
    const worker = this.onWorkers(this.log.fs);
    const startBatch = (b: number, { buffer, lease }: { buffer: number; lease: Lease | null }) => {
      const files = batches[b];
      const free = this.releaseAfter(lease, files.length);
      for (const ref of files) {
        const entry = { batch: b, p: null as unknown as Prefetch, done: false };
        // A worker scan is itself a read-ahead (bounded by its credit): one chunk more here.
        entry.p = new Prefetch(this.scan(this.log.fs, ref, buffer), worker ? 1 : buffer, () => {
          entry.done = true;
          free();
        });
        started.push(entry);
      }
      nextBatch = b + 1;
    };
    /** Starts later batches while the query's and the node's read-ahead allow. */
    const readAhead = async (current: number) => {
      while (nextBatch < batches.length) {
        let ahead = 0;
        for (const s of started) if (s.batch > current && !s.done) ahead++;
        if (ahead + batches[nextBatch].length > this.opts.concurrency) return;
        const leased = await this.leaseFor(batches[nextBatch], 'ahead');
        if (leased === null) return;
        startBatch(nextBatch, leased);
      }
    };
    try {
      for (let b = 0; b < batches.length; b++) {
        if (signal?.aborted) return;
        if (nextBatch === b) {
          // The batch being merged needs all its files at once. Only a query's first batch waits
          // for the budget, before it holds anything: waiting cannot deadlock.
          const leased = await this.leaseFor(batches[b], this.admitted ? 'next' : 'first');
          this.admitted = true;
          if (leased === null) return;
          startBatch(b, leased);
        }
        await readAhead(b);
        const inputs = started.filter((s) => s.batch === b).map((s) => s.p);
        const source = inputs.length === 1 ? inputs[0] : mergeSorted(inputs, this.mergeOptions());
        for await (const chunk of source) {
          yield chunk;
          await readAhead(b); // a finished scan freed a slot: read further ahead
        }
      }
    } finally {
      await Promise.all(started.map((s) => s.p.return()));
    }
  }

  private mergeOptions(): MergeOptions {
    // ULID-only lines are a ULID and a newline: shorter than a record.
    return this.params.ulids === true ? { minLineBytes: ULID_LENGTH } : {};
  }
}
