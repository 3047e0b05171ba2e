// IngestLog: the ingest segment state machine of one data directory (reference §3.3, §3.4).
//
//   create ──▶ <uuid>.active ──flush──▶ .flushed ──next──▶ .pending ──commit──▶ deleted
//                   │ (empty: deleted)      ▲                  │
//                   └──── recovery ─────────┴── fail / timeout ┘
//
// Only atomic renames change a segment's state, so a crash at any point leaves every record in
// exactly one file, and start-up recovery (every .active and .pending back to .flushed) resumes
// from there. The directory is ours alone (lock file), so after recovery the in-memory index is
// authoritative: choosing the oldest flushed segment needs no directory walk.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { NotFoundError } from '../../shared/errors.ts';
import type { FileSystem, Lock, WritableFile } from '../fs/types.ts';
import {
  SegmentAlreadyReadingError,
  SegmentNotReadError,
  SegmentRaceError,
  ShuttingDownError,
  WriterError,
} from './errors.ts';
import type { FlushReason, IngestMetrics } from './metrics.ts';

export const SEGMENT_NAME =
  /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(active|flushed|pending)$/;
/** Claim ids are UUIDs; anything else is refused before it can reach a map or a path. */
export const CLAIM_ID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** A segment being written by one writer. Only that writer touches `file`. */
export class ActiveSegment {
  records = 0;
  /** Clock time of the first write; null while empty. Age rotation is measured from here. */
  firstWriteMs: number | null = null;
  lastWriteMs = 0;
  /** Whether the directory entry has been fsynced (durable writers do it once per segment). */
  dirSynced = false;
  /** Set when a flush or discard has begun; the segment counts as active until it is done. */
  closing = false;
  constructor(
    readonly id: string,
    readonly path: string,
    readonly file: WritableFile,
  ) {}
  get bytes(): number {
    return this.file.size;
  }
}

interface FlushedSegment {
  id: string;
  size: number;
  /** Last write time: OK Log's "oldest" is the smallest mtime. Ties are broken by id. */
  mtimeMs: number;
}

interface Claim {
  id: string;
  segment: FlushedSegment;
  deadline: number;
  reading: boolean;
  /** Streams of the file still open (a /read response, a local re-read); the timeout waits for them (§11.2 item 16). */
  streaming: number;
}

export interface LogStats {
  active: { count: number; bytes: number };
  flushed: { count: number; bytes: number };
  pending: { count: number; bytes: number };
}

export interface IngestLogOptions {
  fs: FileSystem;
  root: string;
  logger: Logger;
  metrics: IngestMetrics;
  pendingTimeoutMs: number;
  now?: () => number;
  /** How often the pending timeout is checked; default min(1 s, timeout / 4). 0 disables the timer. */
  timeoutCheckMs?: number;
}

/** Min-heap of flushed segments by (mtime, id): claimOldest is O(log n), never a directory walk. */
class OldestFirst {
  private readonly items: FlushedSegment[] = [];
  get size(): number {
    return this.items.length;
  }
  private static less(a: FlushedSegment, b: FlushedSegment): boolean {
    return a.mtimeMs < b.mtimeMs || (a.mtimeMs === b.mtimeMs && a.id < b.id);
  }
  push(s: FlushedSegment): void {
    const h = this.items;
    h.push(s);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!OldestFirst.less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  pop(): FlushedSegment | undefined {
    const h = this.items;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && OldestFirst.less(h[l], h[m])) m = l;
        if (r < h.length && OldestFirst.less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

export class IngestLog {
  private readonly fs: FileSystem;
  readonly root: string;
  private readonly logger: Logger;
  private readonly metrics: IngestMetrics;
  private readonly now: () => number;
  private readonly pendingTimeoutMs: number;
  private readonly active = new Set<ActiveSegment>();
  private readonly flushed = new OldestFirst();
  private flushedBytes = 0;
  private readonly claims = new Map<string, Claim>();
  private readonly commitWaiters = new Map<string, Set<() => void>>();
  private timer: NodeJS.Timeout | null = null;
  private lock: Lock | null = null;
  private closed = false;

  private constructor(opts: IngestLogOptions) {
    this.fs = opts.fs;
    this.root = opts.root;
    this.logger = opts.logger;
    this.metrics = opts.metrics;
    this.now = opts.now ?? Date.now;
    this.pendingTimeoutMs = opts.pendingTimeoutMs;
  }

  /** Creates the directory, takes its lock, recovers, and starts the pending-timeout timer. */
  static async open(opts: IngestLogOptions): Promise<IngestLog> {
    const log = new IngestLog(opts);
    await opts.fs.mkdirAll(opts.root);
    log.lock = await opts.fs.lock(join(opts.root, 'LOCK'));
    try {
      await log.recover();
    } catch (err) {
      await log.lock.release().catch(() => {});
      throw err;
    }
    const every = opts.timeoutCheckMs ?? Math.max(10, Math.min(1000, opts.pendingTimeoutMs / 4));
    if (every > 0) {
      log.timer = setInterval(() => {
        log.expirePending().catch((err) => log.logger.error({ err }, 'pending timeout sweep failed'));
      }, every);
      log.timer.unref();
    }
    return log;
  }

  private path(id: string, ext: 'active' | 'flushed' | 'pending'): string {
    return join(this.root, `${id}.${ext}`);
  }

  /** §3.3: every .active and .pending becomes .flushed; records are not examined. */
  private async recover(): Promise<void> {
    let recovered = 0;
    const seen = new Set<string>();
    for (const info of await this.fs.list(this.root)) {
      const m = SEGMENT_NAME.exec(info.name);
      if (!m || info.path !== join(this.root, info.name)) continue; // LOCK, strangers, subdirs
      const [, id, ext] = m;
      // `<id>.active` sorts before `<id>.flushed`: a copy left by an interrupted repair is redone.
      if (seen.has(id)) continue;
      seen.add(id);
      if (info.size === 0) {
        await this.fs.remove(info.path); // empty segments are never flushed
        continue;
      }
      let size = info.size;
      if (ext === 'active') size = await this.repairTail(id, info.path, info.size);
      if (size === 0) continue;
      if (ext !== 'flushed' && (await this.fs.exists(info.path))) {
        await this.fs.rename(info.path, this.path(id, 'flushed'));
        recovered++;
      }
      this.pushFlushed({ id, size, mtimeMs: info.mtimeMs });
    }
    if (recovered > 0) await this.fs.syncDir(this.root);
    this.logger.info(
      { path: this.root, flushed: this.flushed.size, recovered, lockExisted: this.lock?.existed },
      'ingest log opened',
    );
  }

  /**
   * An active segment cut by a crash mid-write (power loss, a short write) may end inside a
   * record. Consumers must only ever see whole records, so the torn tail is cut off: the whole
   * records are copied to `<id>.flushed`, then the `.active` file is removed (a crash in between
   * leaves the `.active` original, and the next recovery starts over). Returns the kept size.
   */
  private async repairTail(id: string, path: string, size: number): Promise<number> {
    const last = await this.lastByte(path, size);
    if (last === 0x0a) return size;
    const data = await this.fs.readFile(path);
    const keep = data.lastIndexOf(0x0a) + 1;
    this.logger.warn(
      { path, size, kept: keep },
      'active segment ends inside a record; cutting the torn tail',
    );
    if (keep > 0) {
      const out = await this.fs.create(this.path(id, 'flushed'));
      await out.write(data.subarray(0, keep));
      await out.sync();
      await out.close();
    }
    await this.fs.remove(path);
    return keep;
  }

  private async lastByte(path: string, size: number): Promise<number> {
    const chunks: Buffer[] = [];
    for await (const c of this.fs.createReadStream(path, { start: size - 1, end: size - 1 }))
      chunks.push(c as Buffer);
    const b = Buffer.concat(chunks);
    return b.length > 0 ? b[b.length - 1] : -1;
  }

  private pushFlushed(s: FlushedSegment): void {
    this.flushed.push(s);
    this.flushedBytes += s.size;
  }

  private ensureOpen(): void {
    if (this.closed) throw new ShuttingDownError();
  }

  /** A new, empty active segment. Writers call this lazily, on their first record. */
  async create(): Promise<ActiveSegment> {
    this.ensureOpen();
    const id = randomUUID();
    const path = this.path(id, 'active');
    let file: WritableFile;
    try {
      file = await this.fs.create(path);
    } catch (err) {
      throw new WriterError('create', path, err);
    }
    const seg = new ActiveSegment(id, path, file);
    this.active.add(seg);
    return seg;
  }

  /** fsyncs the directory once per segment, so a durable segment's name survives a power cut. */
  async syncDirFor(seg: ActiveSegment): Promise<void> {
    if (seg.dirSynced) return;
    await this.fs.syncDir(this.root);
    seg.dirSynced = true;
  }

  /**
   * Closes an active segment and makes it consumable (.flushed); an empty one is deleted instead.
   * Returns whether a segment was flushed.
   */
  async flush(seg: ActiveSegment, reason: FlushReason): Promise<boolean> {
    if (seg.closing || !this.active.has(seg)) return false;
    seg.closing = true;
    try {
      await seg.file.close();
    } catch (err) {
      this.logger.warn({ err, path: seg.path }, 'closing active segment failed');
    }
    const size = seg.bytes;
    try {
      if (size === 0) {
        await this.fs.remove(seg.path);
        return false;
      }
      await this.fs.rename(seg.path, this.path(seg.id, 'flushed'));
    } catch (err) {
      // The file stays .active on disk; start-up recovery will flush it.
      throw new WriterError('flush', seg.path, err);
    } finally {
      this.active.delete(seg);
    }
    this.metrics.flushes.inc({ reason });
    this.metrics.flushSize.observe(size);
    if (seg.firstWriteMs !== null)
      this.metrics.flushAge.observe(Math.max(0, this.now() - seg.firstWriteMs) / 1000);
    // The nop filesystem keeps nothing, so there is nothing to hand to a consumer.
    if (this.fs.kind !== 'nop') this.pushFlushed({ id: seg.id, size, mtimeMs: seg.lastWriteMs });
    return true;
  }

  /** Removes an active segment without flushing it (a bulk upload that failed). */
  async discard(seg: ActiveSegment): Promise<void> {
    if (seg.closing || !this.active.has(seg)) return;
    seg.closing = true;
    await seg.file.close().catch(() => {});
    await this.fs.remove(seg.path).catch((err) => {
      this.logger.warn({ err, path: seg.path }, 'removing discarded segment failed');
    });
    this.active.delete(seg);
  }

  /** `GET /next`: claims the oldest flushed segment (→ .pending); null when there is none. */
  async next(): Promise<{ id: string; segmentId: string } | null> {
    this.ensureOpen();
    const seg = this.flushed.pop();
    if (!seg) return null;
    this.flushedBytes -= seg.size;
    try {
      await this.fs.rename(this.path(seg.id, 'flushed'), this.path(seg.id, 'pending'));
    } catch (err) {
      // Gone from disk under us (someone else's hands in our directory): forget it.
      this.logger.error({ err, segment: seg.id }, 'claiming flushed segment failed');
      throw new SegmentRaceError(err);
    }
    const id = randomUUID();
    this.claims.set(id, {
      id,
      segment: seg,
      deadline: this.now() + this.pendingTimeoutMs,
      reading: false,
      streaming: 0,
    });
    return { id, segmentId: seg.id };
  }

  private claim(id: string): Claim {
    const c = this.claims.get(id);
    if (!c) throw new NotFoundError('404 page not found', { id });
    return c;
  }

  /** `GET /read`: the claimed segment's bytes; a claim can be read once. */
  read(id: string): { stream: Readable; size: number } {
    this.ensureOpen();
    const c = this.claim(id);
    if (c.reading) throw new SegmentAlreadyReadingError(id);
    c.reading = true;
    return { stream: this.stream(c), size: c.segment.size };
  }

  private stream(c: Claim, highWaterMark = 256 * 1024): Readable {
    c.streaming++;
    const stream = this.fs.createReadStream(this.path(c.segment.id, 'pending'), { highWaterMark });
    stream.once('close', () => {
      c.streaming--;
    });
    return stream;
  }

  /**
   * The bytes of a claim already read, again (a consumer in this process keeps a reference to the
   * segment instead of its bytes, and streams it when it replicates). Open streams hold off the
   * pending timeout, as a /read in progress does.
   */
  reread(id: string): Readable {
    this.ensureOpen();
    const c = this.claim(id);
    if (!c.reading) throw new SegmentNotReadError(id);
    return this.stream(c, 1024 * 1024); // in-process: fewer, larger reads
  }

  /**
   * `read` for a consumer in this process (an ingeststore): the whole segment in one Buffer, read
   * in one go instead of streamed through a socket. Same claim rules as `read`, and the claim is
   * then held until it is committed or failed: the pending timeout exists for consumers that
   * vanish, and one in this process cannot vanish while this log lives. (It keeps a reference to
   * the segment and streams it again when it replicates: a claim expired meanwhile would make
   * that fail, batch after batch, with a timeout shorter than a transaction.)
   */
  async readAll(id: string): Promise<Buffer> {
    this.ensureOpen();
    const c = this.claim(id);
    if (c.reading) throw new SegmentAlreadyReadingError(id);
    c.reading = true;
    c.streaming++;
    try {
      return await this.fs.readFile(this.path(c.segment.id, 'pending'));
    } catch (err) {
      c.streaming--; // not held: the consumer fails the claim (or the timeout will)
      throw err;
    }
  }

  /** `POST /commit`: the segment is stored elsewhere; delete it. Returns its size. */
  async commit(id: string): Promise<number> {
    this.ensureOpen();
    const c = this.claim(id);
    if (!c.reading) throw new SegmentNotReadError(id);
    this.claims.delete(id);
    try {
      await this.fs.remove(this.path(c.segment.id, 'pending'));
    } catch (err) {
      this.claims.set(id, c); // still pending; the consumer may retry or fail it
      throw err;
    }
    this.metrics.committedSegments.inc();
    this.metrics.committedBytes.inc(c.segment.size);
    const waiters = this.commitWaiters.get(c.segment.id);
    if (waiters) {
      this.commitWaiters.delete(c.segment.id);
      for (const w of waiters) w();
    }
    return c.segment.size;
  }

  /** `POST /failed`: back to .flushed, whether or not it was read. */
  async fail(id: string): Promise<void> {
    this.ensureOpen();
    const c = this.claim(id);
    this.claims.delete(id);
    await this.unclaim(c);
  }

  private async unclaim(c: Claim): Promise<void> {
    try {
      await this.fs.rename(this.path(c.segment.id, 'pending'), this.path(c.segment.id, 'flushed'));
    } catch (err) {
      this.claims.set(c.id, c);
      throw err;
    }
    this.pushFlushed(c.segment);
    this.metrics.failedSegments.inc();
  }

  /** Fails back every claim past its deadline whose file is not being streamed; returns how many. */
  async expirePending(now = this.now()): Promise<number> {
    let n = 0;
    for (const c of [...this.claims.values()]) {
      if (c.deadline > now || c.streaming > 0 || this.claims.get(c.id) !== c) continue;
      this.claims.delete(c.id);
      try {
        await this.unclaim(c);
        n++;
        this.logger.debug({ id: c.id, segment: c.segment.id }, 'pending segment timed out');
      } catch (err) {
        this.logger.error({ err, id: c.id }, 'failing timed-out segment back failed');
      }
    }
    return n;
  }

  /** Resolves when the segment (by file id, not claim id) is committed; for bulk acknowledgements. */
  whenCommitted(segmentId: string): { promise: Promise<void>; cancel: () => void } {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => {
      resolve = r;
    });
    let set = this.commitWaiters.get(segmentId);
    if (!set) {
      set = new Set();
      this.commitWaiters.set(segmentId, set);
    }
    set.add(resolve);
    const cancel = () => {
      const s = this.commitWaiters.get(segmentId);
      s?.delete(resolve);
      if (s && s.size === 0) this.commitWaiters.delete(segmentId);
    };
    return { promise, cancel };
  }

  stats(): LogStats {
    let activeBytes = 0;
    for (const s of this.active) activeBytes += s.bytes;
    let pendingBytes = 0;
    for (const c of this.claims.values()) pendingBytes += c.segment.size;
    return {
      active: { count: this.active.size, bytes: activeBytes },
      flushed: { count: this.flushed.size, bytes: this.flushedBytes },
      pending: { count: this.claims.size, bytes: pendingBytes },
    };
  }

  /** `GET /_segmentstate`, in OK Log's format. */
  segmentState(): string {
    let out = `${this.claims.size} pending\n`;
    for (const c of this.claims.values())
      out += ` ${c.id}: reading=${c.reading} deadline=${goTime(c.deadline)}\n`;
    return out;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Stops the timer, flushes any active segment left (writers normally flush their own first),
   * returns claims to .flushed (what recovery would do at the next start) and releases the lock.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const seg of [...this.active]) {
      await this.flush(seg, 'close').catch((err) => this.logger.error({ err }, 'flush at close failed'));
    }
    for (const c of [...this.claims.values()]) {
      this.claims.delete(c.id);
      await this.fs
        .rename(this.path(c.segment.id, 'pending'), this.path(c.segment.id, 'flushed'))
        .catch((err) => this.logger.warn({ err, id: c.id }, 'returning claim at close failed'));
    }
    for (const set of this.commitWaiters.values()) set.clear();
    this.commitWaiters.clear();
    await this.lock?.release().catch((err) => this.logger.warn({ err }, 'releasing ingest lock failed'));
    this.lock = null;
  }
}

/** Go's time.Time.String() in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC`. */
export function goTime(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  let frac = '';
  if (d.getUTCMilliseconds() !== 0) frac = `.${pad(d.getUTCMilliseconds(), 3)}`.replace(/0+$/, '');
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}${frac} +0000 UTC`;
}
