// StoreLog: the store's segment files (reference §4.3) and the only code that names, renames or
// deletes them. It keeps an in-memory index of every segment (built by recovery at start-up), so
// queries select files without walking the directory, name collisions are impossible, and a file
// a running query still reads is deleted only once that query lets go of it.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ulidTime } from '../../shared/ulid.ts';
import type { FileSystem, Lock, WritableFile } from '../fs/index.ts';
import { StoreClosedError } from './errors.ts';
import {
  ACTIVE_EXT,
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
  size: number;
  mtimeMs: number;
  /** Records in the file when known (counted when written, or by a full count scan), else null. */
  records: number | null;
  /** Running queries (or compactions) reading the file. */
  refs: number;
  /** Gone from the log; the file is deleted when the last reader releases it. */
  doomed: boolean;
}

/** A segment held by a reader: its file is not deleted until `release()`. */
export interface SegmentRef {
  readonly entry: SegmentEntry;
  /** The file's current path (it changes when the compacter renames it). */
  path(): string;
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

export interface StoreLogOptions {
  fs: FileSystem;
  root: string;
  logger: Logger;
  now?: () => number;
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
  private readonly entries = new Map<number, SegmentEntry>();
  /** Entries (any state, doomed included until their file is gone) per `LOW-HIGH`. */
  private readonly bases = new Map<string, number>();
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
    return join(this.root, segmentFileName(e.low, e.high, e.state));
  }

  /** Adds a segment found on disk (recovery). */
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
      size,
      mtimeMs,
      records,
      refs: 0,
      doomed: false,
    };
    this.entries.set(e.id, e);
    this.bases.set(base, (this.bases.get(base) ?? 0) + 1);
    return e;
  }

  private forget(e: SegmentEntry): void {
    this.entries.delete(e.id);
    const n = (this.bases.get(e.base) ?? 1) - 1;
    if (n <= 0) this.bases.delete(e.base);
    else this.bases.set(e.base, n);
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
   * that name is taken (a retried replication of the same records, a compaction output with an
   * input's bounds), HIGH is nudged up one ULID at a time: the name still bounds the records, no
   * rename can ever overwrite another segment, and compaction later merges the two and drops the
   * duplicates.
   */
  async commit(
    path: string,
    low: string,
    high: string,
    size: number,
    records: number | null = null,
  ): Promise<SegmentEntry> {
    return this.mutex.run(async () => {
      let lo = low;
      let hi = high;
      for (let i = 0; this.bases.has(segmentBase(lo, hi)); i++) {
        const up = nextUlid(hi);
        const down = up === null ? prevUlid(lo) : null;
        if (i >= MAX_NUDGES || (up === null && down === null))
          throw new Error(`no free segment name near ${segmentBase(low, high)}`);
        if (up !== null) hi = up;
        else if (down !== null) lo = down;
      }
      if (lo !== low || hi !== high)
        this.logger.info({ wanted: segmentBase(low, high), got: segmentBase(lo, hi) }, 'store: name taken');
      const target = join(this.root, segmentFileName(lo, hi, 'flushed'));
      await this.fs.rename(path, target);
      await this.fs.syncDir(this.root).catch(() => {});
      return this.adopt(lo, hi, 'flushed', size, this.now(), records);
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
      release: () => {
        if (released) return;
        released = true;
        e.refs--;
        if (e.refs === 0 && e.doomed) void this.unlink(e).catch(() => {}); // logged by unlink
      },
    };
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

  private async rename(e: SegmentEntry, state: SegmentState): Promise<void> {
    const from = this.pathOf(e);
    const to = join(this.root, segmentFileName(e.low, e.high, state));
    await this.fs.rename(from, to);
    e.state = state;
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
   * Removes segments from the log. A file no query holds is deleted now (errors reported);
   * the others when their last reader releases them.
   */
  async remove(list: readonly SegmentEntry[]): Promise<void> {
    const errors: unknown[] = [];
    for (const e of list) {
      if (e.doomed) continue;
      e.doomed = true;
      if (e.refs === 0) await this.unlink(e).catch((err) => errors.push(err));
    }
    if (errors.length > 0) throw errors[0];
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
