// The node-wide read-ahead budget of queries (-store.query-memory). -store.query-concurrency and
// -store.segment-buffer-size bound what ONE query buffers; without a node-wide bound, thirty
// slow readers held thirty queries' worth of read-ahead (RSS 100 → 820 MiB) and glibc kept it
// afterwards. Every batch of segment scans takes its buffers' bytes from this budget before it
// starts and gives them back when its scans end:
// - when the budget is short, a query takes smaller buffers (down to a floor) rather than wait;
// - when even the floor does not fit, it waits its turn (first come, first served), so a queued
//   query is still answered, only later;
// - read-ahead of later batches is taken only while plenty is free;
// - when too many queries already wait, a new one is refused with 503 and Retry-After.
// A query never waits while holding a lease (its previous batch has ended), so waiting cannot
// deadlock.
import { OklogError } from '../../shared/errors.ts';

/** Too many queries are waiting for read-ahead memory on this node: try again shortly. */
export class QueryBusyError extends OklogError {
  readonly status = 503;
  readonly retryAfterSeconds = 1;
  constructor(
    context: Record<string, unknown> = {},
    message = 'too many queries waiting for memory on this node: retry shortly',
  ) {
    super(message, 'OKLOG_ERR_QUERY_BUSY', context);
    this.name = 'QueryBusyError';
  }
}

export interface Lease {
  readonly bytes: number;
  /** Gives the bytes back (idempotent). */
  release(): void;
}

interface Waiter {
  bytes: number;
  resolve: (lease: Lease | null) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

export const DEFAULT_QUERY_MEMORY = 64 * 1024 * 1024;

export class MemoryBudget {
  private used = 0;
  private readonly queue: Waiter[] = [];
  /** Highest `used` seen (tests, metrics). */
  peak = 0;

  constructor(
    readonly capacity: number = DEFAULT_QUERY_MEMORY,
    /** Queries that may wait at once; beyond, QueryBusyError. */
    readonly maxWaiting = 64,
  ) {}

  get free(): number {
    return this.capacity - this.used;
  }

  get waiting(): number {
    return this.queue.length;
  }

  get inUse(): number {
    return this.used;
  }

  /** Refuses a new query (QueryBusyError) when the waiting line is full. */
  admit(): void {
    if (this.queue.length >= this.maxWaiting)
      throw new QueryBusyError({ waiting: this.queue.length, capacity: this.capacity });
  }

  private lease(bytes: number): Lease {
    this.used += bytes;
    if (this.used > this.peak) this.peak = this.used;
    let released = false;
    return {
      bytes,
      release: () => {
        if (released) return;
        released = true;
        this.used -= bytes;
        this.grant();
      },
    };
  }

  /** `bytes` (at most the capacity) now, if they fit and nobody is waiting; else null. */
  tryTake(bytes: number): Lease | null {
    const b = Math.min(bytes, this.capacity);
    if (this.queue.length > 0 || b > this.free) return null;
    return this.lease(b);
  }

  /**
   * `bytes` (at most the capacity), waiting in line for them; resolves null if `signal` aborts
   * first. Throws QueryBusyError when the line is full.
   */
  take(bytes: number, signal?: AbortSignal): Promise<Lease | null> {
    const now = this.tryTake(bytes);
    if (now !== null) return Promise.resolve(now);
    if (signal?.aborted) return Promise.resolve(null);
    this.admit();
    return new Promise((resolve) => {
      const w: Waiter = { bytes: Math.min(bytes, this.capacity), resolve, signal };
      if (signal !== undefined) {
        w.onAbort = () => {
          const i = this.queue.indexOf(w);
          if (i >= 0) this.queue.splice(i, 1);
          resolve(null);
          this.grant(); // the one behind may fit now
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.queue.push(w);
    });
  }

  private grant(): void {
    while (this.queue.length > 0 && this.queue[0].bytes <= this.free) {
      const w = this.queue.shift() as Waiter;
      if (w.onAbort) w.signal?.removeEventListener('abort', w.onAbort);
      w.resolve(this.lease(w.bytes));
    }
  }
}
