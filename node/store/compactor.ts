// Compaction, retention and purge (reference §4.5): one operation per tick (1 s), in rotation
// overlapping → sequential → trash → purge, as OK Log. Fixes (§11.2 item 15): overlapping
// compaction takes pairs too; sequential compaction only merges when the output is at least twice
// its largest input and never touches a segment already ≥ target/2, so each byte is rewritten
// O(log(target/segment)) times instead of once per tick; outputs are split by target size with
// dedupe across the split; a failed compaction deletes its outputs and gives the inputs back.
// Beyond that: an input holding lines that are not records (an OK Log-era file, §11.2 item 2) is
// repaired once (StoreLog.repair) instead of failing the same compaction every 4 s forever; and
// no compaction output spans more than `maxSpanMs` of record time, so merging cannot make a
// record outlive the retention period by more than that (retention trashes by a segment's HIGH).
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { NEWLINE, SPACE } from '../../shared/record.ts';
import {
  isCanonicalUlidAt,
  MAX_ULID,
  maxUlidAt,
  minUlidAt,
  ULID_LENGTH,
  ulidTime,
  ZERO_ULID,
} from '../../shared/ulid.ts';
import { MalformedRecordError } from './errors.ts';
import { compileFilter } from './filter.ts';
import { GcNudge } from './gc-nudge.ts';
import { compareUlid, countLines, lastLineStart, ulidBytes } from './lines.ts';
import { mergeSorted } from './merge.ts';
import type { StoreMetrics } from './metrics.ts';
import { QUARANTINE_DIR } from './quarantine.ts';
import { BAD_EXT } from './segment-name.ts';
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
 * ≤ target, at least two inputs, the output at least twice as big as its largest input (so a
 * growing segment is not rewritten for every small neighbour), and from the run's LOW to its
 * highest HIGH at most `maxSpanMs` of record time (so thirty small daily segments never become
 * one that retention, going by HIGH, keeps until the last day expires). Null when there is none.
 */
export function pickSequential<T extends Ranged>(
  sorted: readonly T[],
  targetSize: number,
  maxInputs: number,
  maxSpanMs = Number.POSITIVE_INFINITY,
): T[] | null {
  const small = targetSize / 2;
  for (let i = 0; i < sorted.length; i++) {
    if (sorted[i].size >= small) continue;
    const start = ulidTime(sorted[i].low);
    let total = 0;
    let max = 0;
    let end = -1;
    let high = '';
    for (let j = i; j < sorted.length && j - i < maxInputs; j++) {
      const size = sorted[j].size;
      if (size >= small || total + size > targetSize) break;
      if (sorted[j].high > high) high = sorted[j].high;
      if (ulidTime(high) - start > maxSpanMs) break;
      total += size;
      if (size > max) max = size;
      if (j > i && 2 * max <= total) end = j;
    }
    if (end >= 0) return sorted.slice(i, end + 1);
  }
  return null;
}

interface Output extends ActiveFile {
  low: string;
  high: string;
  size: number;
  records: number;
  /** The last ULID this output may hold (its LOW's time + the span), as bytes. */
  limit: Buffer;
}

/**
 * Writes a sorted record stream into `.active` files of about `targetSize` bytes each, none
 * spanning more than `maxSpanMs` of record time.
 */
class SplitWriter {
  readonly outputs: { path: string; low: string; high: string; size: number; records: number }[] = [];
  private cur: Output | null = null;
  constructor(
    private readonly log: StoreLog,
    private readonly targetSize: number,
    private readonly maxSpanMs: number,
  ) {}

  async write(chunk: Buffer): Promise<void> {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.cur === null) {
        const a = await this.log.createActive();
        const low = chunk.toString('latin1', pos, pos + ULID_LENGTH);
        const last = Math.min(ulidTime(low) + this.maxSpanMs, ulidTime(MAX_ULID));
        this.cur = { ...a, low, high: low, size: 0, records: 0, limit: ulidBytes(maxUlidAt(last)) };
      }
      const cur = this.cur;
      const room = this.targetSize - cur.size;
      // Cut after the line that reaches the target, so every output holds whole records.
      let end = chunk.length;
      if (chunk.length - pos >= room) {
        const nl = chunk.indexOf(NEWLINE, pos + Math.max(room, 1) - 1);
        end = nl < 0 ? chunk.length : nl + 1;
      }
      // Cut before the first record past the span. Records are sorted: only a piece whose last
      // record is past the limit needs looking into, line by line.
      const spanEnd = SplitWriter.withinLimit(chunk, pos, end, cur.limit);
      const spanCut = spanEnd < end;
      end = spanEnd;
      if (end === pos) {
        await this.closeCurrent(); // the very next record starts a new output
        continue;
      }
      const piece = chunk.subarray(pos, end);
      await cur.file.write(piece);
      cur.size += piece.length;
      cur.records += countLines(piece);
      const ls = lastLineStart(piece);
      cur.high = piece.toString('latin1', ls, ls + ULID_LENGTH);
      pos = end;
      if (cur.size >= this.targetSize || spanCut) await this.closeCurrent();
    }
  }

  /** End of the lines of `buf[pos, end)` whose ULID is ≤ `limit` (the lines are sorted). */
  private static withinLimit(buf: Buffer, pos: number, end: number, limit: Buffer): number {
    if (compareUlid(buf, lastLineStart(buf, end), limit, 0) <= 0) return end;
    let p = pos;
    while (p < end && compareUlid(buf, p, limit, 0) <= 0) {
      const nl = buf.indexOf(NEWLINE, p);
      if (nl < 0 || nl >= end) return end;
      p = nl + 1;
    }
    return p;
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

const MIN_LINE = ULID_LENGTH + 1;

/**
 * Passes one input's chunks (whole lines) through, checking that every line is a record
 * (`<canonical ULID> <text>`), that ULIDs never decrease, and that they lie within the segment's
 * name bounds (queries select files by name: a record outside would never be found). The merge
 * itself only notices lines too short to compare; anything else would pass into the output
 * unsorted or unfindable. The first offence throws MalformedRecordError naming the segment
 * (context `segment`, `line`). About 1.5 GB/s: negligible beside the merge and the disk.
 */
export async function* checkedRecords(
  src: AsyncIterable<Buffer>,
  e: Pick<SegmentEntry, 'low' | 'high' | 'base'>,
): AsyncGenerator<Buffer> {
  const low = ulidBytes(e.low);
  const high = ulidBytes(e.high);
  const prev = Buffer.from(low); // the first record must be ≥ LOW
  let line = 0;
  const bad = (what: string) =>
    new MalformedRecordError(`segment ${e.base}: line ${line} ${what}`, { segment: e.base, line });
  for await (const chunk of src) {
    let pos = 0;
    let last = -1;
    while (pos < chunk.length) {
      line++;
      const nl = chunk.indexOf(NEWLINE, pos);
      if (nl < 0) throw bad('does not end with a newline');
      if (nl - pos < MIN_LINE) throw bad('is shorter than a ULID and a space');
      if (!isCanonicalUlidAt(chunk, pos) || chunk[pos + ULID_LENGTH] !== SPACE)
        throw bad('does not start with a ULID and a space');
      const d = last < 0 ? compareUlid(chunk, pos, prev, 0) : compareUlid(chunk, pos, chunk, last);
      if (d < 0) throw bad(line === 1 ? 'is below the LOW of the file name' : 'is out of order');
      last = pos;
      pos = nl + 1;
    }
    if (last >= 0) {
      if (compareUlid(chunk, last, high, 0) > 0) throw bad('is above the HIGH of the file name');
      chunk.copy(prev, 0, last, last + ULID_LENGTH);
    }
    yield chunk;
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
  /**
   * Most record time one compaction output may span (default retain / 8: with the default 7 days,
   * 21 h). Retention trashes a segment by its HIGH, so a record is trashed at most this much
   * later than `retain` after it was written.
   */
  maxSpanMs?: number;
  /** How often `*.bad` and quarantined files are looked for by the purge step (default 10 min). */
  sweepEveryMs?: number;
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
  readonly maxSpanMs: number;
  private readonly sweepEveryMs: number;
  private lastSweep = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<unknown> | null = null;
  private step = 0;
  private readonly abort = new AbortController();

  constructor(private readonly opts: CompactorOptions) {
    this.log = opts.log;
    this.now = opts.now ?? opts.log.now;
    this.maxInputs = opts.maxInputs ?? 32;
    this.bufferSize = opts.bufferSize ?? 1 << 20;
    this.maxSpanMs = Math.max(1, opts.maxSpanMs ?? Math.floor(opts.retainMs / 8));
    this.sweepEveryMs = opts.sweepEveryMs ?? 600_000;
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

  /** Segments compaction may take: a segment whose repair failed is left alone. */
  private candidates(): SegmentEntry[] {
    return this.log.list(['flushed']).filter((e) => !e.unrepairable);
  }

  compactOverlapping(): Promise<CompactionResult> {
    return this.compact('Overlapping', pickOverlapping(this.candidates(), this.maxInputs));
  }

  compactSequential(): Promise<CompactionResult> {
    return this.compact(
      'Sequential',
      pickSequential(this.candidates(), this.opts.targetSize, this.maxInputs, this.maxSpanMs),
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
    const releaseRefs = () => {
      for (const r of refs) r.release();
    };
    const writer = new SplitWriter(this.log, this.opts.targetSize, this.maxSpanMs);
    const committed: SegmentEntry[] = [];
    let malformed: SegmentEntry | null = null;
    try {
      await this.log.write(async () => {
        const signal = this.abort.signal;
        // Every input keeps a few read chunks: share a fixed budget out among many inputs.
        const chunk = Math.max(64 << 10, Math.min(this.bufferSize, Math.floor(INPUT_MEMORY / refs.length)));
        const scans = refs.map((r) =>
          (async function* (log: StoreLog, size: number) {
            const reader = await openChunkReader(log.fs, r.path, size);
            const records = scanSegment(reader, MATCH_ALL, ulidBytes(r.entry.low), ulidBytes(r.entry.high), {
              signal,
            });
            try {
              yield* checkedRecords(records, r.entry);
            } catch (err) {
              if (err instanceof MalformedRecordError) malformed ??= r.entry;
              throw err;
            }
          })(this.log, chunk),
        );
        for await (const chunk of mergeSorted(scans, { outputChunkBytes: this.bufferSize })) {
          if (signal.aborted) throw new Error('compacter stopped');
          await writer.write(chunk);
          nudge.add(chunk.length);
        }
        if (signal.aborted) throw new Error('compacter stopped');
        await writer.finish();
        // The inputs are being replaced: an output with an input's bounds takes its very name.
        for (const o of writer.outputs)
          committed.push(
            await this.log.commit(o.path, o.low, o.high, o.size, o.records, { replacing: inputs }),
          );
      });
      // Released first: an input no query reads is then deleted at once.
      releaseRefs();
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
      const bad = malformed as SegmentEntry | null;
      this.opts.logger.warn(
        { err: describeError(err), kind, inputs: n, malformed: bad?.base },
        bad === null
          ? 'store: compaction failed, rolling back'
          : 'store: compaction input holds lines that are not records, rolling back to repair it',
      );
      await writer.abort();
      releaseRefs();
      await this.log.remove(committed).catch(() => {});
      await this.log.reset(inputs);
      // Retrying as it is would fail the same way every 4 s and block every other group: the
      // input is repaired once (bad lines set aside in a .bad file), and compaction then goes on.
      if (bad !== null) await this.log.repair(bad, describeError(err));
      observe('Error', n);
      return { kind, inputs: n, outputs: 0, result: 'Error' };
    } finally {
      releaseRefs();
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
    if (this.now() - this.lastSweep >= this.sweepEveryMs) await this.sweepSetAside();
    return n;
  }

  /**
   * Deletes files set aside for a human once they are older than retain + purge, the longest the
   * records they hold would have been kept as segments: `*.bad` files (lines recovery or repair
   * could not read as records) and quarantined ingest segments (`quarantine/*.segment`). Runs at
   * most every `sweepEveryMs` (it lists the directory). Returns how many files it deleted.
   */
  async sweepSetAside(): Promise<number> {
    this.lastSweep = this.now();
    const cutoff = this.now() - this.opts.retainMs - this.opts.purgeMs;
    const root = this.log.root;
    const quarantine = join(root, QUARANTINE_DIR);
    let n = 0;
    let files: Awaited<ReturnType<StoreLog['fs']['list']>>;
    try {
      files = await this.log.fs.list(root);
    } catch (err) {
      this.opts.logger.warn({ err: describeError(err) }, 'store: listing set-aside files failed');
      return 0;
    }
    for (const f of files) {
      const dir = dirname(f.path);
      const kind =
        dir === root && f.name.endsWith(BAD_EXT) ? 'bad' : dir === quarantine ? 'quarantine' : null;
      if (kind === null || f.mtimeMs >= cutoff) continue;
      try {
        await this.log.fs.remove(f.path);
        this.opts.metrics.sweptFiles.inc({ kind });
        n++;
      } catch (err) {
        this.opts.logger.warn(
          { err: describeError(err), file: f.path },
          'store: deleting set-aside file failed',
        );
      }
    }
    if (n > 0)
      this.opts.logger.info({ count: n }, 'store: deleted set-aside files older than retain + purge');
    return n;
  }
}
