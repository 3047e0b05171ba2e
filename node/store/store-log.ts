// StoreLog: the store's segment files (reference §4.3) and the only code that names, renames or
// deletes them. It keeps an in-memory index of every segment (built by recovery at start-up), so
// queries select files without walking the directory, name collisions are impossible, and a file
// a running query still reads is deleted only once that query lets go of it.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import { describeError, OklogError } from '../../shared/errors.ts';
import { ulidTime } from '../../shared/ulid.ts';
import type { FileSystem, Lock, WritableFile } from '../fs/index.ts';
import { StoreClosedError } from './errors.ts';
import { type RewriteResult, rewriteRecords } from './rewrite.ts';
import {
  ACTIVE_EXT,
  BAD_EXT,
  DOOMED_EXT,
  nextUlid,
  prevUlid,
  type SegmentState,
  segmentBase,
  segmentFileName,
} from './segment-name.ts';

export interface SegmentEntry {
  readonly id: number;
  /** Name bounds: every record inside has LOW ≤ ULID ≤ HIGH. */
  readonly low: string;
  readonly high: string;
  readonly base: string;
  state: SegmentState;
  /**
   * The file's name in the store directory: `LOW-HIGH.<state>`, or a unique `….doomed` name once
   * the segment was removed while a reader still held it (so its segment name is free again).
   */
  file: string;
  size: number;
  mtimeMs: number;
  /** Records in the file when known (counted when written, or by a full count scan), else null. */
  records: number | null;
  /** Running queries (or compactions) reading the file. */
  refs: number;
  /** Gone from the log; the file is deleted when the last reader releases it. */
  doomed: boolean;
  /**
   * A repair of its lines failed (see StoreLog.repair): compaction leaves it alone until the next
   * start, instead of failing on it every few seconds.
   */
  unrepairable: boolean;
}

/** A segment held by a reader: its file is not deleted until `release()`. */
export interface SegmentRef {
  readonly entry: SegmentEntry;
  /** The file's current path (it changes when the compacter renames it). */
  path(): string;
  /**
   * Resolves once a rename of the file in progress is over and path() tells its outcome (at
   * once when none is). A reader that gets ENOENT while path() has not changed opened the old
   * name after the rename and before the log learned of it: it waits for this and asks again.
   */
  settled(): Promise<void>;
  release(): void;
}

export interface ActiveFile {
  path: string;
  file: WritableFile;
}

export interface StoreLogStats {
  segments: { count: number; bytes: number };
  trashed: { count: number; bytes: number };
  /** RFC 3339 (ms) times of the oldest and newest record ULIDs, null when there is no segment. */
  oldestRecord: string | null;
  newestRecord: string | null;
}

/** Counters the log updates itself (a subset of StoreMetrics, metrics.ts). */
export interface StoreLogMetrics {
  repairedSegments: Counter<'result'>;
  badLines: Counter;
}

export interface StoreLogOptions {
  fs: FileSystem;
  root: string;
  logger: Logger;
  now?: () => number;
  metrics?: StoreLogMetrics;
}

export interface CommitOptions {
  /**
   * Segments the new one replaces (compaction inputs, a repaired segment): their names count as
   * free, so an output with an input's bounds gets exactly that name instead of a nudged HIGH.
   * The caller removes them right after.
   */
  replacing?: readonly SegmentEntry[];
}

export interface RepairResult extends RewriteResult {
  /** The repaired segment (now removed from the log). */
  segment: string;
}

/**
 * A segment file cannot change state because another indexed file has the name it would take
 * (only while a compaction output and the input it replaces share bounds). Context: `file`.
 */
export class SegmentNameInUseError extends OklogError {
  constructor(file: string) {
    super(`segment file name ${file} is in use`, 'OKLOG_ERR_SEGMENT_NAME_IN_USE', { file });
    this.name = 'SegmentNameInUseError';
  }
}

/** Serialises async critical sections (renames must see a consistent set of names). */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }
}

const MAX_NUDGES = 1000;

export class StoreLog {
  readonly fs: FileSystem;
  readonly root: string;
  readonly logger: Logger;
  readonly now: () => number;
  readonly metrics: StoreLogMetrics | null;
  private readonly entries = new Map<number, SegmentEntry>();
  /** Entries whose file carries their segment name (any state, doomed included), per `LOW-HIGH`. */
  private readonly bases = new Map<string, number>();
  /** Every indexed file by its current name: no rename ever lands on one of them. */
  private readonly files = new Map<string, SegmentEntry>();
  /** Repairs running, by entry id (concurrent callers share one). */
  private readonly repairs = new Map<number, Promise<RepairResult | null>>();
  /** Renames of indexed files in progress, by entry id, until the index has their outcome. */
  private readonly renaming = new Map<number, Promise<void>>();
  private readonly mutex = new Mutex();
  private nextId = 1;
  private lock: Lock | null = null;
  private closed = false;
  private writes = 0;
  private writesIdle: (() => void) | null = null;

  constructor(opts: StoreLogOptions) {
    this.fs = opts.fs;
    this.root = opts.root;
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.metrics = opts.metrics ?? null;
  }

  /** Creates the directory and takes its LOCK (a live holder makes this fail at once). */
  async acquireLock(): Promise<void> {
    await this.fs.mkdirAll(this.root);
    this.lock = await this.fs.lock(join(this.root, 'LOCK'));
    if (this.lock.existed) this.logger.info({ root: this.root }, 'store: stale LOCK found, recovering');
  }

  get isClosed(): boolean {
    return this.closed;
  }

  pathOf(e: SegmentEntry): string {
    return join(this.root, e.file);
  }

  /** Adds a segment found on disk under its own name (recovery). */
  adopt(
    low: string,
    high: string,
    state: SegmentState,
    size: number,
    mtimeMs: number,
    records: number | null = null,
  ): SegmentEntry {
    const base = segmentBase(low, high);
    const e: SegmentEntry = {
      id: this.nextId++,
      low,
      high,
      base,
      state,
      file: segmentFileName(low, high, state),
      size,
      mtimeMs,
      records,
      refs: 0,
      doomed: false,
      unrepairable: false,
    };
    this.entries.set(e.id, e);
    this.files.set(e.file, e);
    this.bases.set(base, (this.bases.get(base) ?? 0) + 1);
    return e;
  }

  /** True while the entry's file is named `LOW-HIGH.<state>` (counted in `bases`). */
  private static named(e: SegmentEntry): boolean {
    return !e.file.endsWith(DOOMED_EXT);
  }

  private unbase(e: SegmentEntry): void {
    const n = (this.bases.get(e.base) ?? 1) - 1;
    if (n <= 0) this.bases.delete(e.base);
    else this.bases.set(e.base, n);
  }

  private forget(e: SegmentEntry): void {
    if (this.entries.get(e.id) !== e) return;
    this.entries.delete(e.id);
    if (this.files.get(e.file) === e) this.files.delete(e.file);
    if (StoreLog.named(e)) this.unbase(e);
  }

  /** Whether `LOW-HIGH.<state>` may be taken by a new file (see commit). */
  private free(low: string, high: string, state: SegmentState, replacing: readonly SegmentEntry[]): boolean {
    if (this.files.has(segmentFileName(low, high, state))) return false;
    const base = segmentBase(low, high);
    let n = this.bases.get(base) ?? 0;
    for (const r of replacing) if (r.base === base && StoreLog.named(r) && this.entries.get(r.id) === r) n--;
    return n <= 0;
  }

  /** Runs a write (replication, compaction output) that `close()` waits for. */
  async write<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreClosedError();
    this.writes++;
    try {
      return await fn();
    } finally {
      if (--this.writes === 0) this.writesIdle?.();
    }
  }

  /** A new `<uuid>.active` file for replication or compaction output. */
  async createActive(): Promise<ActiveFile> {
    if (this.closed) throw new StoreClosedError();
    const path = join(this.root, `${randomUUID()}${ACTIVE_EXT}`);
    return { path, file: await this.fs.create(path) };
  }

  async discard(path: string): Promise<void> {
    await this.fs.remove(path).catch(() => {});
  }

  /**
   * Makes an `.active` (or leftover `.reading`) file a queryable `LOW-HIGH.flushed` segment. If
   * that name is taken (a retried replication of the same records), HIGH is nudged up one ULID
   * at a time: the name still bounds the records, no rename can ever overwrite another segment,
   * and compaction later merges the two and drops the duplicates. The names of the segments in
   * `opts.replacing` count as free: a compaction output whose bounds equal an input's takes that
   * name, instead of a nudged one that would claim records it does not hold (a false overlap).
   */
  async commit(
    path: string,
    low: string,
    high: string,
    size: number,
    records: number | null = null,
    opts: CommitOptions = {},
  ): Promise<SegmentEntry> {
    return this.place(path, low, high, 'flushed', size, this.now(), records, opts.replacing ?? []);
  }

  /**
   * Renames the file at `path` to a free `LOW-HIGH.<state>` name near the one asked for (HIGH
   * nudged up, as commit) and indexes it. Recovery uses it directly for a file found under a
   * reversed name, to keep its state and trash time.
   */
  async place(
    path: string,
    low: string,
    high: string,
    state: SegmentState,
    size: number,
    mtimeMs: number,
    records: number | null = null,
    replacing: readonly SegmentEntry[] = [],
  ): Promise<SegmentEntry> {
    return this.mutex.run(async () => {
      let lo = low;
      let hi = high;
      for (let i = 0; !this.free(lo, hi, state, replacing); i++) {
        const up = nextUlid(hi);
        const down = up === null ? prevUlid(lo) : null;
        if (i >= MAX_NUDGES || (up === null && down === null))
          throw new Error(`no free segment name near ${segmentBase(low, high)}`);
        if (up !== null) hi = up;
        else if (down !== null) lo = down;
      }
      if (lo !== low || hi !== high)
        this.logger.info({ wanted: segmentBase(low, high), got: segmentBase(lo, hi) }, 'store: name taken');
      const target = join(this.root, segmentFileName(lo, hi, state));
      if (target !== path) {
        await this.fs.rename(path, target);
        await this.fs.syncDir(this.root).catch(() => {});
      }
      return this.adopt(lo, hi, state, size, mtimeMs, records);
    });
  }

  /** Live (not doomed) segments in `states`, sorted by LOW then HIGH. */
  list(states: readonly SegmentState[]): SegmentEntry[] {
    const out: SegmentEntry[] = [];
    for (const e of this.entries.values()) if (!e.doomed && states.includes(e.state)) out.push(e);
    return out.sort(byRange);
  }

  /** Holds a segment for reading; its file stays until the ref is released. */
  ref(e: SegmentEntry): SegmentRef {
    e.refs++;
    let released = false;
    return {
      entry: e,
      path: () => this.pathOf(e),
      settled: () => this.settled(e),
      release: () => {
        if (released) return;
        released = true;
        e.refs--;
        // Under the mutex: a moveAside may be renaming the file right now, and deleting it by
        // the name it had before would miss it (ENOENT) and leave it on disk until the restart.
        if (e.refs === 0 && e.doomed) void this.mutex.run(() => this.unlink(e)).catch(() => {}); // logged by unlink
      },
    };
  }

  /** Resolves once no rename of `e`'s file is in progress (see SegmentRef.settled). */
  settled(e: SegmentEntry): Promise<void> {
    return this.renaming.get(e.id) ?? Promise.resolve();
  }

  /**
   * Runs `fn`, a rename of `e`'s file and the index update after it, with settled(e) pending
   * until both are done: in between the file has its new name on disk and the old one in the
   * index. Renames of one entry never overlap (the mutex).
   */
  private async renamingFile<T>(e: SegmentEntry, fn: () => Promise<T>): Promise<T> {
    let done = () => {};
    const p = new Promise<void>((resolve) => {
      done = resolve;
    });
    this.renaming.set(e.id, p);
    try {
      return await fn();
    } finally {
      if (this.renaming.get(e.id) === p) this.renaming.delete(e.id);
      done();
    }
  }

  /**
   * Queryable segments (`.flushed` and `.reading`) whose [LOW, HIGH] overlaps [from, to], sorted
   * by LOW, each held until released.
   */
  select(from: string, to: string): SegmentRef[] {
    if (this.closed) throw new StoreClosedError();
    const out: SegmentRef[] = [];
    for (const e of this.list(['flushed', 'reading'])) {
      if (e.low <= to && e.high >= from) out.push(this.ref(e));
    }
    return out;
  }

  /** Changes a segment's state (its file's extension); never onto a name another file has. */
  private async rename(e: SegmentEntry, state: SegmentState): Promise<void> {
    const to = segmentFileName(e.low, e.high, state);
    const other = this.files.get(to);
    // Two entries share a base only while a compaction output replaces its input: the input's
    // file is about to go, and until then neither may take the other's name.
    if (other !== undefined && other !== e) throw new SegmentNameInUseError(to);
    await this.renamingFile(e, async () => {
      await this.fs.rename(this.pathOf(e), join(this.root, to));
      if (this.files.get(e.file) === e) this.files.delete(e.file);
      e.file = to;
      this.files.set(to, e);
      e.state = state;
    });
  }

  /** `.flushed` → `.reading` (claimed by the compacter; still queryable). */
  async claim(list: readonly SegmentEntry[]): Promise<void> {
    await this.mutex.run(async () => {
      const done: SegmentEntry[] = [];
      try {
        for (const e of list) {
          if (e.state !== 'flushed' || e.doomed) throw new Error(`segment ${e.base} is ${e.state}`);
          await this.rename(e, 'reading');
          done.push(e);
        }
      } catch (err) {
        for (const e of done) await this.rename(e, 'flushed').catch(() => {});
        throw err;
      }
    });
  }

  /** `.reading` → `.flushed` (a failed compaction gives its inputs back). */
  async reset(list: readonly SegmentEntry[]): Promise<void> {
    await this.mutex.run(async () => {
      for (const e of list) {
        if (e.state !== 'reading' || e.doomed) continue;
        await this.rename(e, 'flushed').catch((err) =>
          this.logger.warn({ err, segment: e.base }, 'store: reset failed'),
        );
      }
    });
  }

  /** Moves a segment out of queries into `.trashed`, stamped with the trash time. */
  async trash(e: SegmentEntry): Promise<void> {
    await this.mutex.run(async () => {
      if (e.doomed || e.state === 'trashed') return;
      await this.rename(e, 'trashed');
      const t = this.now();
      e.mtimeMs = t;
      await this.fs.chtimes(this.pathOf(e), new Date(t), new Date(t)).catch((err) => {
        this.logger.warn({ err, segment: e.base }, 'store: setting trash time failed');
      });
    });
  }

  /**
   * Removes segments from the log. A file no query holds is deleted now (errors reported); the
   * others are renamed out of the way (`….doomed`, so their segment names are free for the files
   * that replace them) and deleted when their last reader releases them.
   */
  async remove(list: readonly SegmentEntry[]): Promise<void> {
    const errors: unknown[] = [];
    for (const e of list) {
      if (e.doomed) continue;
      e.doomed = true;
      if (e.refs === 0) await this.unlink(e).catch((err) => errors.push(err));
      else await this.mutex.run(() => this.moveAside(e));
    }
    if (errors.length > 0) throw errors[0];
  }

  /** Renames a doomed, still-read file to a unique name (readers find it again through path()). */
  private async moveAside(e: SegmentEntry): Promise<void> {
    if (e.refs === 0 || !StoreLog.named(e) || this.entries.get(e.id) !== e) return;
    const to = `${e.file}.${randomUUID().slice(0, 8)}${DOOMED_EXT}`;
    await this.renamingFile(e, async () => {
      try {
        await this.fs.rename(this.pathOf(e), join(this.root, to));
      } catch (err) {
        // It keeps its name (and the name stays taken): only a later reuse of that name is put off.
        this.logger.warn(
          { err: describeError(err), segment: e.base },
          'store: renaming removed segment failed',
        );
        return;
      }
      if (this.files.get(e.file) === e) this.files.delete(e.file);
      this.unbase(e);
      e.file = to;
      this.files.set(to, e);
    });
  }

  private async unlink(e: SegmentEntry): Promise<void> {
    try {
      await this.fs.remove(this.pathOf(e));
      this.forget(e);
    } catch (err) {
      if ((err as { code?: string; errno?: string }).code === 'ENOENT') {
        this.forget(e);
        return;
      }
      this.logger.warn({ err, segment: e.base }, 'store: deleting segment failed');
      this.forget(e);
      throw err;
    }
  }

  /**
   * Repairs a `.flushed` segment holding lines that are not records (short, garbage, out of
   * order, outside its name's bounds: an OK Log-era data directory, reference §11.2 item 2),
   * through the same rewrite recovery uses: the valid records go to a new segment (which may
   * take the old name), everything else to `LOW-HIGH.flushed.bad`, and the old segment is
   * removed. Once per segment: concurrent calls share the repair; a segment that is not
   * `.flushed` (a compaction holds it, and repairs it itself when it fails on it), trashed, gone,
   * or whose repair failed before is left alone (null). Never throws: a failed repair is logged
   * and counted, the segment goes back to `.flushed` and is marked `unrepairable`.
   */
  repair(e: SegmentEntry, reason: string): Promise<RepairResult | null> {
    const running = this.repairs.get(e.id);
    if (running !== undefined) return running;
    if (this.closed || e.doomed || e.unrepairable || e.state !== 'flushed') return Promise.resolve(null);
    const p = this.doRepair(e, reason).finally(() => this.repairs.delete(e.id));
    this.repairs.set(e.id, p);
    return p;
  }

  private async doRepair(e: SegmentEntry, reason: string): Promise<RepairResult | null> {
    try {
      await this.claim([e]);
    } catch {
      return null; // taken meanwhile (compaction, trash): whoever holds it deals with it
    }
    // Held while it is read, so the file is not deleted under the rewrite (were it removed).
    const ref = this.ref(e);
    try {
      const badPath = await this.freeBadPath(segmentFileName(e.low, e.high, 'flushed'));
      const r = await this.write(() =>
        rewriteRecords(this, ref.path(), { badPath, replacing: [e], removeSource: false }),
      );
      ref.release(); // before remove: a file nobody reads is deleted at once, not renamed aside
      await this.remove([e]).catch((err) =>
        // The new segment holds every record: the old one is only a duplicate now.
        this.logger.warn(
          { err: describeError(err), segment: e.base },
          'store: removing repaired segment failed',
        ),
      );
      this.metrics?.repairedSegments.inc({ result: 'OK' });
      this.metrics?.badLines.inc(r.quarantined);
      this.logger.warn(
        {
          segment: e.base,
          reason,
          records: r.records,
          duplicates: r.duplicates,
          badLines: r.quarantined,
          output: r.entry?.file ?? null,
          bad: r.badPath,
        },
        'store: repaired a segment holding lines that are not records (set aside in .bad)',
      );
      return { ...r, segment: e.base };
    } catch (err) {
      e.unrepairable = true;
      await this.reset([e]);
      this.metrics?.repairedSegments.inc({ result: 'Error' });
      this.logger.error(
        { err: describeError(err), segment: e.base, reason },
        'store: repairing segment failed; compaction leaves it alone until restart',
      );
      return null;
    } finally {
      ref.release();
    }
  }

  /** `<name>.bad`, or `<name>.<n>.bad` when an earlier repair left one (kept for a human). */
  private async freeBadPath(name: string): Promise<string> {
    for (let n = 0; ; n++) {
      const p = join(this.root, n === 0 ? `${name}${BAD_EXT}` : `${name}.${n}${BAD_EXT}`);
      if (n >= 1000 || !(await this.fs.exists(p))) return p;
    }
  }

  stats(): StoreLogStats {
    const s: StoreLogStats = {
      segments: { count: 0, bytes: 0 },
      trashed: { count: 0, bytes: 0 },
      oldestRecord: null,
      newestRecord: null,
    };
    let low: string | null = null;
    let high: string | null = null;
    for (const e of this.entries.values()) {
      if (e.doomed) continue;
      if (e.state === 'trashed') {
        s.trashed.count++;
        s.trashed.bytes += e.size;
        continue;
      }
      s.segments.count++;
      s.segments.bytes += e.size;
      if (low === null || e.low < low) low = e.low;
      if (high === null || e.high > high) high = e.high;
    }
    // Name bounds are the records' first and last ULIDs (or a hair wider after a nudge).
    s.oldestRecord = low === null ? null : new Date(ulidTime(low)).toISOString();
    s.newestRecord = high === null ? null : new Date(ulidTime(high)).toISOString();
    return s;
  }

  /** Stops new writes, waits (bounded) for running ones, releases the LOCK. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.writes > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, timeoutMs);
        this.writesIdle = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    await this.mutex.run(async () => {});
    await this.lock?.release().catch(() => {});
    this.lock = null;
  }
}

export function byRange(a: SegmentEntry, b: SegmentEntry): number {
  if (a.low !== b.low) return a.low < b.low ? -1 : 1;
  if (a.high !== b.high) return a.high < b.high ? -1 : 1;
  return a.id - b.id;
}
