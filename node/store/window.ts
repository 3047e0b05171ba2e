// The user stream's dedupe-and-order window (reference §4.9, §11.2 item 11 fixed).
//
// Every record reaches `/store/stream` once per replica, from different nodes, at different
// times. OK Log kept records in a tree and, every window/10, emitted those whose ULID TIME was
// older than now − window, then forgot them: pipeline latency (ingest flush + consumer age) is
// usually longer than the 3 s window, so a copy arriving after its twin's emission was emitted
// again, and ordering was approximate.
//
// Here the window is measured on ARRIVAL, and emitted ULIDs are REMEMBERED:
// - a record is held until `window` after it arrived (or sooner, see below), then emitted;
// - whenever records are emitted, every held record with a lower ULID goes out with them, in
//   ULID order, so output is sorted within the horizon of what is held;
// - an emitted ULID is remembered for `window` after its emission; a copy arriving while its
//   twin is held or remembered is dropped. So a ULID is never emitted twice within the window:
//   copies arriving up to `window` apart (in practice: more) are emitted once.
// Memory is bounded: beyond `maxBufferedBytes` held, the oldest arrivals are emitted early;
// beyond `maxRemembered` ULIDs, the oldest are forgotten early (the guarantee then covers
// a shorter span; defaults are sized for ~80k records/s at a 3 s window).
import { ULID_LENGTH } from '../../shared/ulid.ts';
import { MinHeap } from './min-heap.ts';

export interface WindowOptions {
  windowMs: number;
  /** Bytes of records held before the oldest are emitted early (default 32 MiB). */
  maxBufferedBytes?: number;
  /** ULIDs remembered after emission before the oldest are forgotten early (default 262144). */
  maxRemembered?: number;
}

interface Entry {
  ulid: string;
  /** The record with its newline. */
  line: Buffer;
  arrival: number;
  emitted: boolean;
}

/** A FIFO on an array with a moving head (amortised O(1), compacted as it drains). */

class Fifo<T> {
  private items: T[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(x: T): void {
    this.items.push(x);
  }
  peek(): T | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head++];
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }
}

export class WindowDeduper {
  readonly windowMs: number;
  private readonly maxBufferedBytes: number;
  private readonly maxRemembered: number;
  private readonly held = new Map<string, Entry>();
  private readonly heap = new MinHeap<Entry>((x, y) => x.ulid < y.ulid);
  private readonly arrivals = new Fifo<Entry>();
  private readonly remembered = new Map<string, number>();
  private readonly forgetting = new Fifo<{ ulid: string; expiry: number }>();
  private heldBytes = 0;
  /** Copies dropped so far. */
  duplicates = 0;

  constructor(opts: WindowOptions) {
    this.windowMs = opts.windowMs;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 32 * 1024 * 1024;
    this.maxRemembered = opts.maxRemembered ?? 262_144;
  }

  /** Records held, waiting for their window. */
  get size(): number {
    return this.held.size;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  /**
   * Offers one record (`line` with its newline; kept by reference, so pass a copy you will not
   * reuse). Returns false when it is a copy of a held or recently emitted record (dropped).
   */
  add(line: Buffer, now: number): boolean {
    const ulid = line.toString('latin1', 0, ULID_LENGTH);
    const expiry = this.remembered.get(ulid);
    if (this.held.has(ulid) || (expiry !== undefined && expiry > now)) {
      this.duplicates++;
      return false;
    }
    const e: Entry = { ulid, line, arrival: now, emitted: false };
    this.held.set(ulid, e);
    this.heap.push(e);
    this.arrivals.push(e);
    this.heldBytes += line.length;
    return true;
  }

  /**
   * Emits what is due at `now`: every record held for `window`, and every held record with a
   * lower ULID than one of those, in ULID order, as one newline-terminated Buffer (null: none).
   */
  drain(now: number): Buffer | null {
    this.expire(now);
    let bound: string | null = null;
    let excess = this.heldBytes - this.maxBufferedBytes;
    for (let e = this.arrivals.peek(); e !== undefined; e = this.arrivals.peek()) {
      if (!e.emitted) {
        if (e.arrival + this.windowMs > now && excess <= 0) break;
        excess -= e.line.length;
        if (bound === null || e.ulid > bound) bound = e.ulid;
      }
      this.arrivals.shift();
    }
    if (bound === null) return null;
    const out: Buffer[] = [];
    let bytes = 0;
    for (let top = this.heap.peek(); top !== undefined && top.ulid <= bound; top = this.heap.peek()) {
      this.heap.pop();
      top.emitted = true;
      this.held.delete(top.ulid);
      this.heldBytes -= top.line.length;
      this.remember(top.ulid, now + this.windowMs);
      out.push(top.line);
      bytes += top.line.length;
    }
    return out.length === 1 ? out[0] : Buffer.concat(out, bytes);
  }

  private remember(ulid: string, expiry: number): void {
    this.remembered.set(ulid, expiry);
    this.forgetting.push({ ulid, expiry });
    while (this.remembered.size > this.maxRemembered) this.forgetOldest();
  }

  private expire(now: number): void {
    for (let f = this.forgetting.peek(); f !== undefined && f.expiry <= now; f = this.forgetting.peek())
      this.forgetOldest();
  }

  private forgetOldest(): void {
    const f = this.forgetting.shift();
    if (f === undefined) return;
    if (this.remembered.get(f.ulid) === f.expiry) this.remembered.delete(f.ulid);
  }
}
