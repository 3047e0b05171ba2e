// Compaction, retention and purge (reference §4.5): one operation per tick (1 s), in rotation
// overlapping → sequential → trash → purge, as OK Log. Fixes (§11.2 item 15): overlapping
// compaction takes pairs too; sequential compaction only merges when the output is at least twice
// its largest input and never touches a segment already ≥ target/2, so each byte is rewritten
// O(log(target/segment)) times instead of once per tick; outputs are split by target size with
// dedupe across the split; a failed compaction deletes its outputs and gives the inputs back.
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { MAX_ULID, minUlidAt, ULID_LENGTH, ZERO_ULID } from '../../shared/ulid.ts';
import { compileFilter } from './filter.ts';
import { GcNudge } from './gc-nudge.ts';
import { countLines, lastLineStart, ulidBytes } from './lines.ts';
import { mergeSorted } from './merge.ts';
import type { StoreMetrics } from './metrics.ts';
import { openChunkReader, type ScanFilter, scanSegment } from './segment-reader.ts';
import type { ActiveFile, SegmentEntry, StoreLog } from './store-log.ts';

const nudge = new GcNudge();
/** Read buffer memory a compaction shares out among its inputs (each reader keeps 4 chunks). */
const INPUT_MEMORY = 4 << 20;

export type CompactionKind = 'Overlapping' | 'Sequential';

interface Ranged {
  low: string;
  high: string;
  size: number;
}

/**
 * The largest group of transitively overlapping segments (inclusive bounds; two are enough),
 * at most `maxInputs` of them (the lowest). `sorted` is sorted by LOW. Null when none overlap.
 */
export function pickOverlapping<T extends Ranged>(sorted: readonly T[], maxInputs: number): T[] | null {
  let best: T[] | null = null;
  let group: T[] = [];
  let maxHigh = '';
  const consider = () => {
    if (group.length >= 2 && (best === null || group.length > best.length)) best = group;
  };
  for (const s of sorted) {
    if (group.length > 0 && s.low <= maxHigh) {
      group.push(s);
      if (s.high > maxHigh) maxHigh = s.high;
    } else {
      consider();
      group = [s];
      maxHigh = s.high;
    }
  }
  consider();
  return best === null ? null : (best as T[]).slice(0, maxInputs);
}

/**
 * The oldest run of consecutive small segments worth merging: every input < target/2, the total
 * ≤ target, at least two inputs, and the output at least twice as big as its largest input (so a
 * growing segment is not rewritten for every small neighbour). Null when there is none.
 */
export function pickSequential<T extends Ranged>(
  sorted: readonly T[],
  targetSize: number,
  maxInputs: number,
): T[] | null {
  const small = targetSize / 2;
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i].size >= small) continue;
    let total = 0;
    let max = 0;
    let end = -1;
    for (let j = i; j < sorted.length && j - i < maxInputs; j++) {
      const size = sorted[j].size;
      if (size >= small || total + size > targetSize) break;
      total += size;
      if (size > max) max = size;
      if (j > i && 2 * max <= total) end = j;
    }
    if (end >= 0) return sorted.slice(i, end + 1);
  }
  return null;
}

/** Writes a sorted record stream into `.active` files of about `targetSize` bytes each. */
class SplitWriter {
  readonly outputs: { path: string; low: string; high: string; size: number; records: number }[] = [];
  private cur: (ActiveFile & { low: string; high: string; size: number; records: number }) | null = null;
  constructor(
    private readonly log: StoreLog,
    private readonly targetSize: number,
  ) {}

  async write(chunk: Buffer): Promise<void> {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.cur === null) {
        const a = await this.log.createActive();
        const low = chunk.toString('latin1', pos, pos + ULID_LENGTH);
        this.cur = { ...a, low, high: low, size: 0, records: 0 };
      }
      const cur = this.cur;
      const room = this.targetSize - cur.size;
      // Cut after the line that reaches the target, so every output holds whole records.
      let end = chunk.length;
      if (chunk.length - pos >= room) {
        const nl = chunk.indexOf(0x0a, pos + Math.max(room, 1) - 1);
        end = nl < 0 ? chunk.length : nl + 1;
      }
      const piece = chunk.subarray(pos, end);
      await cur.file.write(piece);
      cur.size += piece.length;
      cur.records += countLines(piece);
      const ls = lastLineStart(piece);
      cur.high = piece.toString('latin1', ls, ls + ULID_LENGTH);
      pos = end;
      if (cur.size >= this.targetSize) await this.closeCurrent();
    }
  }

  private async closeCurrent(): Promise<void> {
    const cur = this.cur;
    if (cur === null) return;
    this.cur = null;
    await cur.file.sync();
    await cur.file.close();
    this.outputs.push({ path: cur.path, low: cur.low, high: cur.high, size: cur.size, records: cur.records });
  }

  async finish(): Promise<void> {
    await this.closeCurrent();
  }

  /** Deletes every output file (failed compaction). */
  async abort(): Promise<void> {
    const cur = this.cur;
    this.cur = null;
    if (cur !== null) {
      await cur.file.close().catch(() => {});
      await this.log.discard(cur.path);
    }
    for (const o of this.outputs) await this.log.discard(o.path);
  }
}

const MATCH_ALL: ScanFilter = {
  matcher: compileFilter({ q: '', regex: false }),
  needle: null,
  all: true,
  from: ulidBytes(ZERO_ULID),
  to: ulidBytes(MAX_ULID),
};

export interface CompactorOptions {
  log: StoreLog;
  logger: Logger;
  metrics: StoreMetrics;
  /** -store.segment-target-size: output split size and sequential-merge budget. */
  targetSize: number;
  /** -store.segment-retain, ms. */
  retainMs: number;
  /** -store.segment-purge, ms. */
  purgeMs: number;
  /** Clock for retention and purge (default: the log's). */
  now?: () => number;
  /** Tick period (OK Log: 1 s). */
  tickMs?: number;
  /** Most segments merged in one compaction (open files). */
  maxInputs?: number;
  /** Read chunk per input. */
  bufferSize?: number;
}

export interface CompactionResult {
  kind: CompactionKind;
  inputs: number;
  outputs: number;
  result: 'OK' | 'Error' | 'NoSegmentsAvailable';
}

export class Compactor {
  private readonly log: StoreLog;
  private readonly now: () => number;
  private readonly maxInputs: number;
  private readonly bufferSize: number;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<unknown> | null = null;
  private step = 0;
  private readonly abort = new AbortController();

  constructor(private readonly opts: CompactorOptions) {
    this.log = opts.log;
    this.now = opts.now ?? opts.log.now;
    this.maxInputs = opts.maxInputs ?? 32;
    this.bufferSize = opts.bufferSize ?? 1 << 20;
  }

  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => void this.tick(), this.opts.tickMs ?? 1000);
    this.timer.unref();
  }

  /** Stops ticking; a compaction in progress is abandoned (rolled back). */
  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.abort.abort();
    await this.running?.catch(() => {});
  }

  /** Runs the next operation of the rotation, unless one is still running. */
  async tick(): Promise<void> {
    if (this.running !== null || this.abort.signal.aborted || this.log.isClosed) return;
    const ops = [
      () => this.compactOverlapping(),
      () => this.compactSequential(),
      () => this.trashExpired(),
      () => this.purgeTrash(),
    ];
    const op = ops[this.step++ % ops.length];
    this.running = op()
      .catch((err) => this.opts.logger.error({ err }, 'store: compacter operation failed'))
      .finally(() => {
        this.running = null;
      });
    await this.running;
  }

  compactOverlapping(): Promise<CompactionResult> {
    return this.compact('Overlapping', pickOverlapping(this.log.list(['flushed']), this.maxInputs));
  }

  compactSequential(): Promise<CompactionResult> {
    return this.compact(
      'Sequential',
      pickSequential(this.log.list(['flushed']), this.opts.targetSize, this.maxInputs),
    );
  }

  private async compact(kind: CompactionKind, inputs: SegmentEntry[] | null): Promise<CompactionResult> {
    const t0 = performance.now();
    const observe = (result: CompactionResult['result'], n: number) =>
      this.opts.metrics.compactDuration.observe(
        { kind, compacted: String(n), result },
        (performance.now() - t0) / 1000,
      );
    if (inputs === null || inputs.length < 2) {
      observe('NoSegmentsAvailable', 0);
      return { kind, inputs: 0, outputs: 0, result: 'NoSegmentsAvailable' };
    }
    const n = inputs.length;
    try {
      await this.log.claim(inputs);
    } catch (err) {
      this.opts.logger.warn({ err: describeError(err), kind }, 'store: claiming segments failed');
      observe('Error', n);
      return { kind, inputs: n, outputs: 0, result: 'Error' };
    }
    const refs = inputs.map((e) => this.log.ref(e));
    const writer = new SplitWriter(this.log, this.opts.targetSize);
    const committed: SegmentEntry[] = [];
    try {
      await this.log.write(async () => {
        const signal = this.abort.signal;
        // Every input keeps a few read chunks: share a fixed budget out among many inputs.
        const chunk = Math.max(64 << 10, Math.min(this.bufferSize, Math.floor(INPUT_MEMORY / refs.length)));
        const scans = refs.map((r) =>
          (async function* (log: StoreLog, size: number) {
            const reader = await openChunkReader(log.fs, r.path, size);
            yield* scanSegment(reader, MATCH_ALL, ulidBytes(r.entry.low), ulidBytes(r.entry.high), {
              signal,
            });
          })(this.log, chunk),
        );
        for await (const chunk of mergeSorted(scans, { outputChunkBytes: this.bufferSize })) {
          if (signal.aborted) throw new Error('compacter stopped');
          await writer.write(chunk);
          nudge.add(chunk.length);
        }
        if (signal.aborted) throw new Error('compacter stopped');
        await writer.finish();
        for (const o of writer.outputs)
          committed.push(await this.log.commit(o.path, o.low, o.high, o.size, o.records));
      });
      await this.log.remove(inputs).catch((err) => {
        // The outputs hold every record: a leftover input is only a duplicate, merged again later.
        this.opts.logger.warn({ err: describeError(err) }, 'store: deleting compacted segments failed');
      });
      observe('OK', n);
      this.opts.logger.debug(
        { kind, inputs: n, outputs: committed.map((e) => e.base) },
        'store: compacted segments',
      );
      return { kind, inputs: n, outputs: committed.length, result: 'OK' };
    } catch (err) {
      this.opts.logger.warn(
        { err: describeError(err), kind, inputs: n },
        'store: compaction failed, rolling back',
      );
      await writer.abort();
      await this.log.remove(committed).catch(() => {});
      await this.log.reset(inputs);
      observe('Error', n);
      return { kind, inputs: n, outputs: 0, result: 'Error' };
    } finally {
      for (const r of refs) r.release();
    }
  }

  /** Moves every segment whose newest record is older than the retention period to trash. */
  async trashExpired(): Promise<number> {
    const cutoff = minUlidAt(this.now() - this.opts.retainMs);
    let n = 0;
    for (const e of this.log.list(['flushed'])) {
      if (e.high >= cutoff) continue;
      try {
        await this.log.trash(e);
        this.opts.metrics.trashedSegments.inc({ success: 'true' });
        n++;
      } catch (err) {
        this.opts.metrics.trashedSegments.inc({ success: 'false' });
        this.opts.logger.warn({ err: describeError(err), segment: e.base }, 'store: trashing segment failed');
      }
    }
    if (n > 0) this.opts.logger.info({ count: n }, 'store: moved segments to trash');
    return n;
  }

  /** Deletes trashed segments that have been in the trash longer than the purge period. */
  async purgeTrash(): Promise<number> {
    const cutoff = this.now() - this.opts.purgeMs;
    let n = 0;
    for (const e of this.log.list(['trashed'])) {
      if (e.mtimeMs >= cutoff) continue;
      try {
        await this.log.remove([e]);
        this.opts.metrics.purgedSegments.inc({ success: 'true' });
        n++;
      } catch (err) {
        this.opts.metrics.purgedSegments.inc({ success: 'false' });
        this.opts.logger.warn({ err: describeError(err), segment: e.base }, 'store: purging segment failed');
      }
    }
    if (n > 0) this.opts.logger.info({ count: n }, 'store: purged trashed segments');
    return n;
  }
}
