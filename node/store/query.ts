// The per-node query (`/store/_query`, reference §4.6): select the segments whose names overlap
// [from, to], group them into batches of transitively overlapping ranges, scan each file, k-way
// merge within a batch (dedupe by ULID) and concatenate batches in order. Unlike OK Log, scans run
// with bounded concurrency and bounded read-ahead, so neither file handles nor memory grow with
// the number of segments or the size of the result.
import type { FileSystem } from '../fs/index.ts';
import { countLines, ulidBytes } from './lines.ts';
import { mergeSorted } from './merge.ts';
import { Prefetch } from './prefetch.ts';
import type { QueryStats } from './query-headers.ts';
import type { QueryParams } from './query-params.ts';
import type { PoolScanJob, ScanPool } from './scan-pool.ts';
import { openChunkReader, type ScanFilter, scanSegment } from './segment-reader.ts';
import type { SegmentRef, StoreLog } from './store-log.ts';

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

/** Yields every source in turn (all already running); closes them all when stopped early. */
async function* concatSources(sources: AsyncIterator<Buffer>[]): AsyncGenerator<Buffer> {
  try {
    for (const src of sources) {
      for (;;) {
        const r = await src.next();
        if (r.done) break;
        yield r.value;
      }
    }
  } finally {
    await Promise.all(sources.map((s) => Promise.resolve(s.return?.()).catch(() => {})));
  }
}

export class LocalQuery {
  readonly stats: QueryStats;
  private readonly refs: SegmentRef[];
  private released = false;

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

  /** Lets go of the selected segments (idempotent; also done when `records()` finishes). */
  close(): void {
    if (this.released) return;
    this.released = true;
    for (const r of this.refs) r.release();
  }

  /** A file's per-scan buffer size: -store.segment-buffer-size, shared out in a large batch. */
  private bufferFor(batchSize: number): number {
    const share = Math.floor(BATCH_MEMORY / Math.max(1, batchSize));
    return Math.max(MIN_READ_CHUNK, Math.min(this.opts.bufferSize, share));
  }

  private scan(fs: FileSystem, ref: SegmentRef, buffer: number): AsyncIterator<Buffer> {
    const filter = this.filter;
    const chunk = Math.min(READ_CHUNK_MAX, buffer);
    const signal = this.opts.signal;
    const pool = this.opts.pool;
    // Workers pay off when there is work per byte (a term, a regex, a topic); an export of every
    // record is a copy, cheaper here than copied twice across threads.
    if (pool !== undefined && fs.kind === 'real' && !filter.all) {
      const jobs = this.poolJobs(ref, chunk, buffer, pool);
      return jobs.length === 1 ? pool.scan(jobs[0]) : concatSources(jobs.map((j) => pool.scan(j)));
    }
    return (async function* () {
      const reader = await openChunkReader(fs, ref.path, chunk);
      yield* scanSegment(reader, filter, ulidBytes(ref.entry.low), ulidBytes(ref.entry.high), { signal });
    })();
  }

  /**
   * Worker scans of one file: a big file is split into byte ranges scanned on several workers at
   * once; a range owns the lines that start in it, so the ranges' outputs, concatenated in order,
   * are the file's.
   */
  private poolJobs(ref: SegmentRef, chunk: number, buffer: number, pool: ScanPool): PoolScanJob[] {
    const job: PoolScanJob = {
      path: ref.path,
      params: this.params,
      low: ref.entry.low,
      high: ref.entry.high,
      // A worker switches between its scans between chunks: keep regex chunks (slow per byte)
      // small, so another query's scan on the same worker waits little.
      chunk: this.params.regex ? Math.min(chunk, REGEX_CHUNK) : chunk,
      budget: buffer,
    };
    const parts = Math.min(pool.size, Math.floor(ref.entry.size / (this.opts.splitBytes ?? SPLIT_BYTES)));
    if (parts < 2) return [job];
    const step = Math.ceil(ref.entry.size / parts);
    return Array.from({ length: parts }, (_, k) => ({
      ...job,
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
      this.close();
    }
    return limit === null ? total : Math.min(total, limit);
  }

  private async countFile(ref: SegmentRef): Promise<number> {
    const e = ref.entry;
    const whole = this.filter.all && e.low >= this.params.from && e.high <= this.params.to;
    if (whole && e.records !== null) return e.records;
    const buffer = this.bufferFor(1);
    const chunk = Math.min(READ_CHUNK_MAX, buffer);
    const pool = this.opts.pool;
    let n = 0;
    if (pool !== undefined && this.log.fs.kind === 'real') {
      const jobs = this.poolJobs(ref, chunk, buffer, pool);
      const counts = await Promise.all(jobs.map((j) => pool.count(j, this.opts.signal)));
      for (const c of counts) n += c;
    } else {
      for await (const c of { [Symbol.asyncIterator]: () => this.scan(this.log.fs, ref, buffer) })
        n += countLines(c);
    }
    if (whole && !this.opts.signal?.aborted) e.records = n; // known from now on
    return n;
  }

  /** Matching records, ascending by ULID, deduplicated, as chunks of whole lines. Run once. */
  async *records(): AsyncGenerator<Buffer> {
    try {
      yield* this.stream(batchSegments(this.refs));
    } finally {
      this.close();
    }
  }

  private async *stream(batches: SegmentRef[][]): AsyncGenerator<Buffer> {
    const files = batches.flat();
    const batchOf = new Map<SegmentRef, number>();
    batches.forEach((b, i) => {
      for (const r of b) batchOf.set(r, i);
    });
    const started: Prefetch[] = [];
    let active = 0;
    const start = (forBatch: number) => {
      // The batch being merged needs all its files; beyond it, read ahead up to the limit.
      while (
        started.length < files.length &&
        (batchOf.get(files[started.length]) === forBatch || active < this.opts.concurrency)
      ) {
        const ref = files[started.length];
        const buffer = this.bufferFor(batches[batchOf.get(ref) ?? 0].length);
        active++;
        started.push(
          new Prefetch(this.scan(this.log.fs, ref, buffer), buffer, () => {
            active--;
          }),
        );
      }
    };
    try {
      let first = 0;
      for (let b = 0; b < batches.length; b++) {
        if (this.opts.signal?.aborted) return;
        start(b);
        const inputs = started.slice(first, first + batches[b].length);
        first += batches[b].length;
        const source = inputs.length === 1 ? inputs[0] : mergeSorted(inputs);
        for await (const chunk of source) {
          yield chunk;
          start(b); // a finished scan freed a slot: read further ahead
        }
      }
    } finally {
      await Promise.all(started.map((p) => p.return()));
    }
  }
}
