// What every ingest producer (TCP connection, bulk upload, acked HTTP write) needs, built once by
// startIngest: the log, metrics, settings, and factories for writers and framers.
import type { Logger } from 'pino';
import { UlidGenerator } from '../../shared/ulid.ts';
import { FrameBufferPool } from './buffer-pool.ts';
import { LineFramer, type TopicMode } from './line-reader.ts';
import type { IngestMetrics } from './metrics.ts';
import { RateLimitedLog } from './rate-limit.ts';
import type { IngestLog } from './segment-log.ts';
import { DEFAULT_INGEST_MEMORY, IngestMemory } from './write-queue.ts';
import { Writer, type WriteTally } from './writer.ts';

export interface IngestSettings {
  topicMode: TopicMode;
  topic: string;
  maxRecordSize: number;
  flushSize: number;
  flushAgeMs: number;
  maxWriteBody: number;
  bulkMaxSize: number;
  bulkAckTimeoutMs: number;
}

export class IngestContext {
  readonly tally: WriteTally = { records: 0, bytes: 0 };
  /** Framed bytes queued for the disk by every connection together (see write-queue.ts). */
  readonly memory = new IngestMemory(DEFAULT_INGEST_MEMORY);
  /** Framer output buffers, reused once written (WriteQueue gives them back). */
  readonly pool = new FrameBufferPool();
  /** One shared limiter: a flood of oversized lines logs a line every 10 s, not one per line. */
  readonly tooLargeLog: RateLimitedLog;
  constructor(
    readonly log: IngestLog,
    readonly metrics: IngestMetrics,
    readonly logger: Logger,
    readonly settings: IngestSettings,
    readonly now: () => number,
  ) {
    this.tooLargeLog = new RateLimitedLog(logger, 10_000, now);
  }

  writer(rotate = true): Writer {
    return new Writer({
      log: this.log,
      metrics: this.metrics,
      logger: this.logger,
      flushSize: rotate ? this.settings.flushSize : Number.POSITIVE_INFINITY,
      flushAgeMs: rotate ? this.settings.flushAgeMs : 0,
      tally: this.tally,
      now: this.now,
    });
  }

  /** A framer with its own ULID generator (one per connection: ULIDs increase per connection). */
  framer(opts: { topic?: string; stampLater?: boolean } = {}): LineFramer {
    const topic = opts.topic;
    return new LineFramer({
      topicMode: topic !== undefined ? 'static' : this.settings.topicMode,
      topic: topic ?? this.settings.topic,
      maxRecordSize: this.settings.maxRecordSize,
      ulids: opts.stampLater ? null : new UlidGenerator({ now: this.now }),
      // Only producers whose WriteQueue gives buffers back (TCP and bulk connections).
      pool: opts.stampLater ? undefined : this.pool,
    });
  }

  /** Counts and (rate-limited) logs lines dropped for size. */
  tooLarge(n: number, remote: string, modality: string): void {
    if (n <= 0) return;
    this.metrics.recordsDropped.inc({ reason: 'too_large' }, n);
    this.tooLargeLog.warn(
      { remote, modality, dropped: n, maxRecordSize: this.settings.maxRecordSize },
      'dropped record(s) over -ingest.max-record-size',
    );
  }
}
