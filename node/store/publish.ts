// Feeding live streams (reference §4.2 step 7): after a replicated segment is stored, its records
// are handed to the stream registry. OK Log kept the whole body in memory for this; here the new
// file is read back (it is in the page cache) in line-aligned chunks, one segment at a time, in
// the order they were stored, so memory stays bounded whatever the segment size.
//
// Regex subscribers are matched on the scan workers when the node has them: each such
// subscriber scans the new segments itself, in order, as a low-priority scan group of its own, so
// an expensive pattern costs a worker's time slices (shared fairly with queries, stopped by the
// pool's watchdog if one record stalls it) instead of the main thread's, and never delays other
// subscribers. The main thread matches plain terms and topics, a few microseconds per record,
// giving the event loop back every few milliseconds (StreamRegistry.publish).
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { MAX_ULID, ZERO_ULID } from '../../shared/ulid.ts';
import { newScanGroup, type ScanPool } from './scan-pool.ts';
import { openChunkReader } from './segment-reader.ts';
import type { SegmentEntry, SegmentRef, StoreLog } from './store-log.ts';
import type { StreamRegistry, Subscription } from './stream.ts';

export interface SegmentPublisherOptions {
  /** Skip the work while nobody is streaming. */
  wanted?: () => boolean;
  /**
   * Segments waiting beyond this are skipped (a stream is live; it cannot wait for a backlog),
   * counted in oklog_store_stream_skipped_segments_total.
   */
  maxPending?: number;
  /** Scan workers: regex subscribers are matched there (without, on the main thread). */
  pool?: ScanPool;
  /** Segments a worker-matched subscriber may have waiting; beyond, it is dropped as too slow. */
  maxSubscriberBacklog?: number;
}

const CHUNK = 1 << 20;
/** Read-ahead of one subscriber's scan on a worker. */
const SCAN_BUDGET = 256 << 10;

/** One worker-matched subscriber: the segments it still has to scan, in order. */
interface Offloaded {
  sub: Subscription;
  group: number;
  queue: SegmentRef[];
  running: boolean;
}

export class SegmentPublisher {
  private queue: Promise<void> = Promise.resolve();
  private pending = 0;
  private readonly wanted: () => boolean;
  private readonly maxPending: number;
  private readonly maxBacklog: number;
  private readonly pool: ScanPool | undefined;
  private readonly offloaded = new Map<Subscription, Offloaded>();
  private readonly running = new Set<Promise<void>>();

  constructor(
    private readonly log: StoreLog,
    private readonly registry: StreamRegistry,
    private readonly logger: Logger,
    opts: SegmentPublisherOptions | (() => boolean) = {},
  ) {
    const o = typeof opts === 'function' ? { wanted: opts } : opts;
    this.wanted = o.wanted ?? (() => true);
    this.maxPending = o.maxPending ?? 64;
    this.maxBacklog = o.maxSubscriberBacklog ?? 16;
    this.pool = o.pool;
  }

  enqueue(entry: SegmentEntry): void {
    if (!this.wanted()) return;
    const local: Subscription[] = [];
    for (const sub of this.registry.subscribers()) {
      if (this.pool !== undefined && sub.spec?.regex === true) this.offload(sub, entry);
      else local.push(sub);
    }
    if (local.length === 0) return;
    if (this.pending >= this.maxPending) {
      this.registry.metrics.skippedSegments.inc();
      this.logger.warn(
        { segment: entry.base, pending: this.pending },
        'store: stream publishing backlog full, segment not streamed',
      );
      return;
    }
    const ref = this.log.ref(entry);
    this.pending++;
    this.queue = this.queue
      .then(() => this.publish(ref.path, ref.settled, local))
      .catch((err) =>
        this.logger.warn({ err: describeError(err), segment: entry.base }, 'store: stream publishing failed'),
      )
      .finally(() => {
        this.pending--;
        ref.release();
      });
  }

  private async publish(
    path: () => string,
    settled: () => Promise<void>,
    subs: Subscription[],
  ): Promise<void> {
    // A compaction may be renaming the fresh segment as it is opened: the open waits, takes the new name.
    const reader = await openChunkReader(this.log.fs, path, CHUNK, settled);
    let carry: Buffer | null = null;
    try {
      for (;;) {
        if (subs.every((s) => s.closed)) return;
        const chunk = await reader.next();
        if (chunk === null) break;
        // The reader reuses its buffers: publish copies.
        const joined: Buffer = carry === null ? Buffer.from(chunk) : Buffer.concat([carry, chunk]);
        const end = joined.lastIndexOf(0x0a) + 1;
        carry = end < joined.length ? joined.subarray(end) : null;
        if (end > 0) await this.registry.publish(joined.subarray(0, end), subs);
      }
    } finally {
      await reader.close();
    }
  }

  /** Queues a segment for a worker-matched subscriber and starts its scans if idle. */
  private offload(sub: Subscription, entry: SegmentEntry): void {
    let o = this.offloaded.get(sub);
    if (o === undefined) {
      o = { sub, group: newScanGroup(), queue: [], running: false };
      this.offloaded.set(sub, o);
      void sub.gone.then(() => this.forget(sub));
    }
    if (o.queue.length >= this.maxBacklog) {
      // Its matching cannot keep up with what this node receives.
      this.registry.deliverOverflow(sub);
      this.forget(sub);
      return;
    }
    o.queue.push(this.log.ref(entry));
    if (!o.running) {
      o.running = true;
      const p = this.runOffloaded(o).finally(() => this.running.delete(p));
      this.running.add(p);
    }
  }

  private forget(sub: Subscription): void {
    const o = this.offloaded.get(sub);
    if (o === undefined) return;
    this.offloaded.delete(sub);
    if (!o.running) for (const r of o.queue.splice(0)) r.release();
  }

  private async runOffloaded(o: Offloaded): Promise<void> {
    const pool = this.pool as ScanPool;
    const spec = o.sub.spec as NonNullable<Subscription['spec']>;
    try {
      for (let ref = o.queue.shift(); ref !== undefined; ref = o.queue.shift()) {
        try {
          if (o.sub.closed) continue;
          const scan = pool.scan(
            {
              path: ref.path,
              params: { q: spec.q, regex: spec.regex, topic: spec.topic, from: ZERO_ULID, to: MAX_ULID },
              low: ref.entry.low,
              high: ref.entry.high,
              chunk: 128 << 10,
              budget: SCAN_BUDGET,
            },
            {
              signal: o.sub.closedSignal,
              group: o.group,
              onCpu: (ms) => {
                this.registry.chargeCpu(o.sub, ms); // over budget: dropped, its signal stops the scan
              },
            },
          );
          for await (const chunk of scan) this.registry.deliver(o.sub, chunk);
        } catch (err) {
          if (!o.sub.closed)
            this.logger.warn(
              { err: describeError(err), segment: ref.entry.base, who: o.sub.label },
              'store: stream matching failed for a subscriber',
            );
          this.registry.fail(o.sub, err);
        } finally {
          ref.release();
        }
      }
    } finally {
      o.running = false;
      if (o.sub.closed) this.forget(o.sub);
    }
  }

  /** Waits for queued segments to be published. */
  async drain(): Promise<void> {
    await this.queue;
    await Promise.all([...this.running]);
  }
}
