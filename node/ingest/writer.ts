// Writer: owns one producer's active segment and rotates it (reference §3.2, with two fixes):
// - the segment is created lazily, on the first record, so idle connections leave no empty files;
// - age rotation is measured from the segment's FIRST write (a timer started then), not a
//   free-running ticker, so a flushed segment is at most `flushAge` old when it becomes
//   consumable (§11.2 item 16).
// Operations are serialised on a promise chain, so an age rotation never interleaves with a write.
// Failures never throw past the caller: they reject that caller's promise with a WriterError, are
// logged and counted, and the producer (connection) is closed. The process stays up (§11.2 item 22).
import type { Logger } from 'pino';
import { WriterError } from './errors.ts';
import type { FlushReason, IngestMetrics } from './metrics.ts';
import type { ActiveSegment, IngestLog } from './segment-log.ts';

export interface WriterOptions {
  log: IngestLog;
  metrics: IngestMetrics;
  logger: Logger;
  /** Rotate once the segment holds this many bytes (Infinity: never, as for bulk uploads). */
  flushSize: number;
  /** Rotate this long after the segment's first write (0: never). */
  flushAgeMs: number;
  /** Running totals for `GET /ingest/stats`, shared by every writer of the node. */
  tally: WriteTally;
  now?: () => number;
}

export interface WriteTally {
  records: number;
  bytes: number;
}

export class Writer {
  private readonly log: IngestLog;
  private readonly metrics: IngestMetrics;
  private readonly logger: Logger;
  private readonly flushSize: number;
  private readonly flushAgeMs: number;
  private readonly now: () => number;
  private readonly tally: WriteTally;
  private seg: ActiveSegment | null = null;
  private tail: Promise<unknown> = Promise.resolve();
  private ageTimer: NodeJS.Timeout | null = null;
  private broken: WriterError | null = null;
  private closed = false;

  constructor(opts: WriterOptions) {
    this.log = opts.log;
    this.metrics = opts.metrics;
    this.logger = opts.logger;
    this.flushSize = opts.flushSize;
    this.flushAgeMs = opts.flushAgeMs;
    this.now = opts.now ?? Date.now;
    this.tally = opts.tally;
  }

  /** The segment being written, if any (bulk uploads need its id to await the commit). */
  get segment(): ActiveSegment | null {
    return this.seg;
  }

  private enqueue<T>(op: () => Promise<T>): Promise<T> {
    const p = this.tail.then(op);
    this.tail = p.catch(() => {});
    return p;
  }

  /**
   * Appends framed records with one writev; with `sync`, fsyncs before resolving (durable mode,
   * acked writes). Rotation by size happens after the write, so a segment exceeds `flushSize` by
   * at most one batch and no record is ever split across segments.
   */
  write(bufs: readonly Buffer[], records: number, sync = false): Promise<void> {
    return this.enqueue(() => this.doWrite(bufs, records, sync));
  }

  private fail(op: string, path: string, err: unknown, records: number): WriterError {
    const e = err instanceof WriterError ? err : new WriterError(op, path, err);
    this.broken ??= e;
    this.metrics.writerErrors.inc({ op: String(e.context.op ?? op) });
    if (records > 0) this.metrics.recordsDropped.inc({ reason: 'write_error' }, records);
    this.logger.error({ err: e, code: e.code }, 'ingest writer failed; closing its connection');
    return e;
  }

  private async doWrite(bufs: readonly Buffer[], records: number, sync: boolean): Promise<void> {
    if (this.broken) throw this.broken;
    if (this.closed) throw new WriterError('write', '', new Error('writer closed'));
    if (records === 0) return;
    let seg = this.seg;
    if (!seg) {
      try {
        seg = await this.log.create();
      } catch (err) {
        throw this.fail('create', '', err, records);
      }
      this.seg = seg;
    }
    let bytes = 0;
    for (const b of bufs) bytes += b.length;
    try {
      await seg.file.write(bufs);
      if (sync) {
        await seg.file.sync();
        await this.log.syncDirFor(seg);
        this.metrics.syncs.inc();
      }
    } catch (err) {
      const e = this.fail(sync ? 'write+sync' : 'write', seg.path, err, records);
      // Keep what was written before: flush it so it is consumed rather than lost.
      await this.rotate('close').catch(() => {});
      throw e;
    }
    const now = this.now();
    seg.records += records;
    seg.lastWriteMs = now;
    if (seg.firstWriteMs === null) {
      seg.firstWriteMs = now;
      if (this.flushAgeMs > 0) {
        const first = seg;
        this.ageTimer = setTimeout(() => {
          this.enqueue(() => this.rotate('age', first)).catch(() => {});
        }, this.flushAgeMs);
        this.ageTimer.unref();
      }
    }
    this.metrics.bytesWritten.inc(bytes);
    this.metrics.recordsWritten.inc(records);
    this.tally.bytes += bytes;
    this.tally.records += records;
    if (seg.bytes >= this.flushSize) {
      try {
        await this.rotate('size');
      } catch (err) {
        throw this.fail('flush', seg.path, err, 0);
      }
    }
  }

  /** fsync without writing (a no-op when nothing is active). */
  sync(): Promise<void> {
    return this.enqueue(async () => {
      const seg = this.seg;
      if (!seg || this.broken) return;
      await seg.file.sync();
      await this.log.syncDirFor(seg);
      this.metrics.syncs.inc();
    });
  }

  /** Flushes the current segment; `expected` makes a late age timer a no-op after a size rotation. */
  private async rotate(reason: FlushReason, expected?: ActiveSegment): Promise<void> {
    const seg = this.seg;
    if (!seg || (expected && seg !== expected)) return;
    if (this.ageTimer) clearTimeout(this.ageTimer);
    this.ageTimer = null;
    this.seg = null;
    try {
      await this.log.flush(seg, reason);
    } catch (err) {
      if (reason === 'age') this.fail('flush', seg.path, err, 0); // nobody awaits a timer
      throw err;
    }
  }

  /** Flushes what was written (reason `close`) after every queued write; idempotent. */
  close(): Promise<void> {
    const p = this.enqueue(async () => {
      this.closed = true;
      await this.rotate('close');
    });
    return p.catch((err) => {
      this.fail('flush', '', err, 0);
    });
  }

  /** Removes the segment instead of flushing it (a bulk upload that will be answered ERR). */
  discard(): Promise<void> {
    return this.enqueue(async () => {
      this.closed = true;
      if (this.ageTimer) clearTimeout(this.ageTimer);
      this.ageTimer = null;
      const seg = this.seg;
      this.seg = null;
      if (seg) await this.log.discard(seg);
    });
  }

  /** Resolves after every queued operation (used by shutdown). */
  idle(): Promise<void> {
    return this.tail.then(() => {});
  }
}
