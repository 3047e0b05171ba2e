// The node's live-stream registry (reference §4.9 `/store/_stream`, §11.2 item 12 fixed).
//
// Records replicated to this node are published here; every subscriber (one per `_stream`
// connection) has a filter and its own bounded queue. `publish` never waits for a subscriber's
// client: it filters, appends to each queue and returns. A subscriber whose queue exceeds its
// bound (a client that does not read fast enough) is dropped: its connection is closed, a metric
// counts it and a line is logged. Other subscribers are unaffected. OK Log instead blocked
// matching for every subscriber behind the slowest one, under a lock that also blocked new
// registrations.
//
// Matching costs CPU, and a regex can cost a lot of it: `publish` gives the event loop back every
// few milliseconds (requests, gossip), and each subscriber has a CPU budget (a token bucket: a
// burst, refilled at a share of one core). A subscriber whose matching outruns it is dropped like
// a slow one, with its own metric. Regex subscribers are matched on the scan workers when the node
// has them (publish.ts), charged the same way.
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { OklogError } from '../../shared/errors.ts';
import { NEWLINE } from '../../shared/record.ts';
import type { FilterSpec, RecordMatcher } from './filter.ts';
import { countLines } from './lines.ts';

/** The subscriber could not keep up and was dropped. */
export class SlowSubscriberError extends OklogError {
  constructor(context: Record<string, unknown>) {
    super('stream subscriber too slow: dropped', 'OKLOG_ERR_SLOW_SUBSCRIBER', context);
    this.name = 'SlowSubscriberError';
  }
}

/** The registry is closed (the node is shutting down). */
export class StreamClosedError extends OklogError {
  readonly status = 503;
  constructor() {
    super('stream registry is closed (node shutting down)', 'OKLOG_ERR_STREAM_CLOSED');
    this.name = 'StreamClosedError';
  }
}

/** The subscriber's matching used more CPU than its budget: dropped. */
export class ExpensiveSubscriberError extends OklogError {
  constructor(context: Record<string, unknown>) {
    super(
      'stream subscriber too expensive to match (CPU budget exceeded): dropped',
      'OKLOG_ERR_EXPENSIVE_SUBSCRIBER',
      context,
    );
    this.name = 'ExpensiveSubscriberError';
  }
}

export interface StreamMetrics {
  subscribers: Gauge;
  dropped: Counter;
  cpuDropped: Counter;
  publishedRecords: Counter;
  skippedSegments: Counter;
  upstreamFailures: Counter;
}

function shared<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

export function createStreamMetrics(registry: Registry): StreamMetrics {
  const registers = [registry];
  return {
    subscribers: shared(
      registry,
      'oklog_store_stream_subscribers',
      () =>
        new Gauge({
          name: 'oklog_store_stream_subscribers',
          help: 'Live /store/_stream subscribers on this node.',
          registers,
        }),
    ),
    dropped: shared(
      registry,
      'oklog_store_stream_dropped_subscribers_total',
      () =>
        new Counter({
          name: 'oklog_store_stream_dropped_subscribers_total',
          help: 'Stream subscribers dropped: queue overflowed (too slow) or CPU budget exceeded.',
          registers,
        }),
    ),
    cpuDropped: shared(
      registry,
      'oklog_store_stream_cpu_dropped_subscribers_total',
      () =>
        new Counter({
          name: 'oklog_store_stream_cpu_dropped_subscribers_total',
          help: 'Stream subscribers dropped because matching their filter exceeded its CPU budget.',
          registers,
        }),
    ),
    skippedSegments: shared(
      registry,
      'oklog_store_stream_skipped_segments_total',
      () =>
        new Counter({
          name: 'oklog_store_stream_skipped_segments_total',
          help: 'Replicated segments not offered to live streams because publishing was too far behind.',
          registers,
        }),
    ),
    publishedRecords: shared(
      registry,
      'oklog_store_stream_published_records_total',
      () =>
        new Counter({
          name: 'oklog_store_stream_published_records_total',
          help: 'Replicated records offered to stream subscribers (counted while any subscriber is connected).',
          registers,
        }),
    ),
    upstreamFailures: shared(
      registry,
      'oklog_store_stream_upstream_failures_total',
      () =>
        new Counter({
          name: 'oklog_store_stream_upstream_failures_total',
          help: '/store/stream connections to a node’s /store/_stream that failed or ended (each is retried).',
          registers,
        }),
    ),
  };
}

export interface SubscribeOptions {
  match: RecordMatcher;
  /** The filter `match` was compiled from (publish.ts matches regexes on the scan workers). */
  spec?: FilterSpec;
  /** Who this is, for log lines (e.g. the remote address). */
  label?: string;
}

/**
 * One subscriber's queue. The registry appends; the connection takes everything queued at once
 * (`take`) and writes it. Bytes taken but not yet accepted by the socket are the connection's to
 * bound (it waits for 'drain' before taking more), so a subscriber holds at most about twice its
 * queue bound.
 */
export class Subscription {
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private queuedRecords = 0;
  private wake: (() => void) | null = null;
  /** undefined while open; null once ended cleanly; the error once dropped. */
  private end: Error | null | undefined = undefined;
  private onGone: (() => void) | null = null;
  private readonly ended = new AbortController();
  /** Aborted once the subscription is closed, dropped or unsubscribed (interrupts a 'drain' wait). */
  readonly closedSignal: AbortSignal = this.ended.signal;
  readonly gone: Promise<void>;
  /** CPU budget left (ms) and when it was last refilled (performance.now()). */
  credit = 0;
  creditAt = 0;
  /** CPU milliseconds spent matching for this subscriber. */
  cpuMs = 0;

  constructor(
    readonly id: number,
    readonly label: string,
    readonly match: RecordMatcher,
    private readonly remove: (s: Subscription) => void,
    readonly spec?: FilterSpec,
  ) {
    this.gone = new Promise((resolve) => {
      this.onGone = resolve;
    });
  }

  get bytes(): number {
    return this.queuedBytes;
  }

  get records(): number {
    return this.queuedRecords;
  }

  get closed(): boolean {
    return this.end !== undefined;
  }

  /** Registry side: queues `buf` (whole records). */
  offer(buf: Buffer, records: number): void {
    if (this.end !== undefined) return;
    this.queue.push(buf);
    this.queuedBytes += buf.length;
    this.queuedRecords += records;
    this.signal();
  }

  /** Registry side: ends the subscription (null: clean end, else why it was dropped). */
  close(reason: Error | null): void {
    if (this.end !== undefined) return;
    this.end = reason;
    if (reason !== null) {
      // Dropped: what is queued will never be written.
      this.queue = [];
      this.queuedBytes = 0;
      this.queuedRecords = 0;
    }
    this.signal();
  }

  /**
   * Connection side: everything queued (waiting until something is), or null once the stream
   * ended cleanly. Throws SlowSubscriberError once dropped.
   */
  async take(): Promise<Buffer[] | null> {
    for (;;) {
      if (this.end instanceof Error) throw this.end;
      if (this.queue.length > 0) {
        const out = this.queue;
        this.queue = [];
        this.queuedBytes = 0;
        this.queuedRecords = 0;
        return out;
      }
      if (this.end === null) return null;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  /** Connection side: the connection is gone; stop queueing for it. Idempotent. */
  unsubscribe(): void {
    if (this.end === undefined) this.end = null;
    this.queue = [];
    this.queuedBytes = 0;
    this.queuedRecords = 0;
    this.remove(this);
    this.signal();
    this.onGone?.();
    this.onGone = null;
  }

  private signal(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
    if (this.end !== undefined && !this.ended.signal.aborted) this.ended.abort();
  }
}

export interface StreamRegistryOptions {
  logger: Logger;
  metrics: StreamMetrics;
  /** Most records queued per subscriber before it is dropped (default 262144). */
  bufferRecords?: number;
  /** Most bytes queued per subscriber before it is dropped (default 16 MiB). */
  bufferBytes?: number;
  /** CPU a subscriber's matching may use in a burst, ms (default 5000). */
  cpuBurstMs?: number;
  /** Share of one core a subscriber's matching may use in the long run (default 0.5). */
  cpuShare?: number;
}

/** Time `publish` works before giving the event loop back. */
const SLICE_MS = 5;

export class StreamRegistry {
  private readonly subs = new Set<Subscription>();
  private readonly logger: Logger;
  readonly metrics: StreamMetrics;
  private readonly maxRecords: number;
  private readonly maxBytes: number;
  private nextId = 1;
  private closed = false;
  private readonly closing = new AbortController();
  /** Aborted when the registry closes (the node is shutting down): user streams end then too. */
  readonly shutdown: AbortSignal = this.closing.signal;
  readonly cpuBurstMs: number;
  readonly cpuShare: number;

  constructor(opts: StreamRegistryOptions) {
    this.logger = opts.logger;
    this.metrics = opts.metrics;
    this.maxRecords = opts.bufferRecords ?? 262_144;
    this.maxBytes = opts.bufferBytes ?? 16 * 1024 * 1024;
    this.cpuBurstMs = opts.cpuBurstMs ?? 5000;
    this.cpuShare = opts.cpuShare ?? 0.5;
  }

  /** The current subscribers. */
  subscribers(): Subscription[] {
    return [...this.subs];
  }

  /** Subscribers connected now (the publisher skips reading segments back when there are none). */
  get size(): number {
    return this.subs.size;
  }

  hasSubscribers(): boolean {
    return this.subs.size > 0;
  }

  /** Throws StreamClosedError (503) once the node is shutting down. */
  assertOpen(): void {
    if (this.closed) throw new StreamClosedError();
  }

  subscribe(opts: SubscribeOptions): Subscription {
    this.assertOpen();
    const sub = new Subscription(
      this.nextId++,
      opts.label ?? '',
      opts.match,
      (s) => {
        if (this.subs.delete(s)) this.metrics.subscribers.dec();
      },
      opts.spec,
    );
    sub.credit = this.cpuBurstMs;
    sub.creditAt = performance.now();
    this.subs.add(sub);
    this.metrics.subscribers.inc();
    return sub;
  }

  /**
   * Offers sorted newline-terminated records (just replicated to this node) to every subscriber
   * (or those in `only`). Never waits for a subscriber's client; gives the event loop back every
   * few milliseconds of matching, so `records` must stay unchanged until the promise resolves
   * (what a subscriber keeps is copied). A final line without a newline is ignored.
   */
  async publish(records: Buffer, only?: readonly Subscription[]): Promise<void> {
    if (this.subs.size === 0 || records.length === 0) return;
    // Line ends once for all subscribers.
    const ends: number[] = [];
    for (let i = records.indexOf(NEWLINE); i >= 0; i = records.indexOf(NEWLINE, i + 1)) ends.push(i);
    if (ends.length === 0) return;
    this.metrics.publishedRecords.inc(ends.length);
    const complete = ends[ends.length - 1] + 1;
    let whole: Buffer | null = null; // one shared copy for subscribers that match every record
    let sliceEnd = performance.now() + SLICE_MS;
    for (const sub of only ?? [...this.subs]) {
      if (sub.closed) continue;
      const parts: Buffer[] = [];
      let bytes = 0;
      let n = 0;
      let runStart = -1;
      let runEnd = 0;
      let start = 0;
      // A regex can take a millisecond per record: look at the clock on every one then.
      const every = sub.spec?.regex === true ? 1 : 64;
      let t0 = performance.now();
      let dropped = false;
      for (let k = 0; k < ends.length; k++) {
        const nl = ends[k];
        if (sub.match(records, start, nl)) {
          if (runStart < 0) runStart = start;
          runEnd = nl + 1;
          n++;
        } else if (runStart >= 0) {
          parts.push(records.subarray(runStart, runEnd));
          bytes += runEnd - runStart;
          runStart = -1;
        }
        start = nl + 1;
        if (k % every === 0) {
          const now = performance.now();
          if (now < sliceEnd) continue;
          if (!this.chargeCpu(sub, now - t0)) {
            dropped = true;
            break;
          }
          await new Promise<void>((resolve) => setImmediate(resolve));
          if (sub.closed) {
            dropped = true;
            break;
          }
          t0 = performance.now();
          sliceEnd = t0 + SLICE_MS;
        }
      }
      if (dropped || !this.chargeCpu(sub, performance.now() - t0)) continue;
      if (runStart >= 0) {
        parts.push(records.subarray(runStart, runEnd));
        bytes += runEnd - runStart;
      }
      if (n === 0) continue;
      let piece: Buffer;
      if (bytes === complete && parts.length === 1) {
        whole ??= Buffer.from(records.subarray(0, complete));
        piece = whole;
      } else {
        piece = Buffer.concat(parts, bytes);
      }
      this.deliver(sub, piece, n);
    }
  }

  /**
   * Queues records for one subscriber (matched elsewhere, e.g. on a scan worker; `records` is
   * kept, not copied), dropping it if its queue is over the bound.
   */
  deliver(sub: Subscription, records: Buffer, n = countLines(records)): void {
    if (sub.closed || n === 0) return;
    // Over the bound with something still queued: the subscriber is behind. (An empty queue
    // always takes one piece, so a bound smaller than a publish does not drop everyone.)
    if (
      sub.records > 0 &&
      (sub.bytes + records.length > this.maxBytes || sub.records + n > this.maxRecords)
    ) {
      this.drop(sub);
      return;
    }
    sub.offer(records, n);
  }

  /**
   * Charges `ms` of matching CPU to a subscriber's budget; false (and the subscriber dropped)
   * once the budget is exhausted.
   */
  chargeCpu(sub: Subscription, ms: number): boolean {
    if (sub.closed) return false;
    const now = performance.now();
    sub.credit = Math.min(this.cpuBurstMs, sub.credit + (now - sub.creditAt) * this.cpuShare);
    sub.creditAt = now;
    sub.credit -= ms;
    sub.cpuMs += ms;
    if (sub.credit >= 0) return true;
    const ctx = { subscriber: sub.id, who: sub.label, cpuMs: Math.round(sub.cpuMs) };
    sub.close(new ExpensiveSubscriberError(ctx));
    if (this.subs.delete(sub)) this.metrics.subscribers.dec();
    this.metrics.dropped.inc();
    this.metrics.cpuDropped.inc();
    this.logger.warn(
      { ...ctx, burstMs: this.cpuBurstMs, share: this.cpuShare },
      'store: dropping stream subscriber whose filter costs more CPU than its budget; its connection is closed',
    );
    return false;
  }

  /** Drops a subscriber whose matching cannot keep up with what the node receives. */
  deliverOverflow(sub: Subscription): void {
    if (!sub.closed) this.drop(sub);
  }

  /** Drops a subscriber whose matching failed (a worker scan stopped as stalled, an I/O error). */
  fail(sub: Subscription, err: unknown): void {
    if (sub.closed) return;
    const stalled = (err as { code?: string }).code === 'OKLOG_ERR_SCAN_STALLED';
    sub.close(
      stalled ? new ExpensiveSubscriberError({ subscriber: sub.id, who: sub.label }) : (err as Error),
    );
    if (this.subs.delete(sub)) this.metrics.subscribers.dec();
    this.metrics.dropped.inc();
    if (stalled) this.metrics.cpuDropped.inc();
  }

  private drop(sub: Subscription): void {
    const ctx = { subscriber: sub.id, who: sub.label, queuedBytes: sub.bytes, queuedRecords: sub.records };
    sub.close(new SlowSubscriberError(ctx));
    if (this.subs.delete(sub)) this.metrics.subscribers.dec();
    this.metrics.dropped.inc();
    this.logger.warn(
      { ...ctx, maxBytes: this.maxBytes, maxRecords: this.maxRecords },
      'store: dropping slow stream subscriber (its queue is full); its connection is closed',
    );
  }

  /**
   * Ends every subscription cleanly (each connection finishes what it holds and ends its
   * response) and refuses new ones; waits up to `timeoutMs` for the connections to finish.
   */
  async close(timeoutMs = 1000): Promise<void> {
    this.closed = true;
    this.closing.abort();
    const subs = [...this.subs];
    for (const s of subs) s.close(null);
    if (subs.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([Promise.all(subs.map((s) => s.gone)), timeout]);
    clearTimeout(timer);
    for (const s of subs) if (this.subs.delete(s)) this.metrics.subscribers.dec();
  }
}
