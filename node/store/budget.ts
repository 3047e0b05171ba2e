// The node-wide read-ahead budget of queries (-store.query-memory). -store.query-concurrency and
// -store.segment-buffer-size bound what ONE query buffers; without a node-wide bound, thirty
// slow readers held thirty queries' worth of read-ahead (RSS 100 → 820 MiB) and glibc kept it
// afterwards. Every batch of segment scans takes its buffers' bytes from this budget before it
// starts and gives them back when its scans end:
// - when the budget is short, a query takes smaller buffers (a fair share) rather than wait;
// - buffers of the floor size may also use a reserve of half the capacity: queries that arrive
//   while earlier ones hold full buffers still start, with small ones;
// - when even that is used up, a new query waits its turn (first come, first served), so a
//   queued query is still answered, only later; a query already running never waits again
//   (its next batch takes the floor even over the limit: it has just given back as much);
// - read-ahead of later batches is taken only while plenty is free;
// - when too many queries already wait, a new one is refused with 503 and Retry-After.
// Only a query holding nothing waits, so waiting cannot deadlock.
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

export const DEFAULT_QUERY_MEMORY = 32 * 1024 * 1024;

export class MemoryBudget {
  private used = 0;
  private readonly queue: Waiter[] = [];
  /** Highest `used` seen (tests, metrics). */
  peak = 0;

  /** Leases held now. */
  holders = 0;
  /** Told after every change (metrics). */
  onChange: (() => void) | null = null;
  /** Extra room for floor-size leases beyond the capacity. */
  readonly reserve: number;

  constructor(
    readonly capacity: number = DEFAULT_QUERY_MEMORY,
    /** Queries that may wait at once; beyond, QueryBusyError. */
    readonly maxWaiting = 64,
  ) {
    this.reserve = Math.floor(capacity / 2);
  }

  /** Bytes free below the capacity (what full-size buffers may use). */
  get free(): number {
    return Math.max(0, this.capacity - this.used);
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
    this.holders++;
    if (this.used > this.peak) this.peak = this.used;
    this.onChange?.();
    let released = false;
    return {
      bytes,
      release: () => {
        if (released) return;
        released = true;
        this.used -= bytes;
        this.holders--;
        this.grant();
        this.onChange?.();
      },
    };
  }

  /**
   * `bytes` now, even beyond the capacity: for a query already running, whose next batch must
   * not queue behind newcomers (it has just given back about as much).
   */
  force(bytes: number): Lease {
    return this.lease(bytes);
  }

  /**
   * `bytes` (at most the capacity) now, if they fit and nobody is waiting; else null. `floor`:
   * a floor-size lease, which may also use the reserve.
   */
  tryTake(bytes: number, floor = false): Lease | null {
    const b = Math.min(bytes, this.capacity);
    const limit = this.capacity + (floor ? this.reserve : 0);
    if (this.queue.length > 0 || this.used + b > limit) return null;
    return this.lease(b);
  }

  /**
   * A floor-size lease of `bytes`, waiting in line for it; resolves null if `signal` aborts
   * first. Rejects with QueryBusyError when the line is full, unless `admitted`: the query
   * passed admit() before its response started, and refusing it now would cut its answer short
   * instead of answering 503 (a fan-out's local answer takes its first lease only once every
   * node has sent its headers, and the line may have filled meanwhile). The line can so grow
   * past maxWaiting, by queries that found room in it when they arrived; each holds nothing.
   */
  take(bytes: number, signal?: AbortSignal, admitted = false): Promise<Lease | null> {
    const now = this.tryTake(bytes, true);
    if (now !== null) return Promise.resolve(now);
    if (signal?.aborted) return Promise.resolve(null);
    if (!admitted) {
      try {
        this.admit();
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise((resolve) => {
      const w: Waiter = { bytes: Math.min(bytes, this.capacity), resolve, signal };
      if (signal !== undefined) {
        w.onAbort = () => {
          const i = this.queue.indexOf(w);
          if (i >= 0) this.queue.splice(i, 1);
          resolve(null);
          this.grant(); // the one behind may fit now
          this.onChange?.();
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.queue.push(w);
      this.onChange?.();
    });
  }

  private grant(): void {
    while (this.queue.length > 0 && this.used + this.queue[0].bytes <= this.capacity + this.reserve) {
      const w = this.queue.shift() as Waiter;
      if (w.onAbort) w.signal?.removeEventListener('abort', w.onAbort);
      w.resolve(this.lease(w.bytes));
    }
  }
}
