// The bounded buffer between stdin and the network. Full means `maxRecords` or `maxBytes` reached;
// then `block` stops reading stdin (backpressure to the producer, as OK Log always did) and
// `drop-oldest` discards the oldest buffered records so the newest keep flowing, counting them.
// Records already handed to a sender are outside the buffer and never dropped.
import { NEWLINE } from '../../shared/record.ts';
import type { Block } from './line-splitter.ts';
import { type Subscribe, Waiters, waitAny } from './wait.ts';

export type OnFull = 'block' | 'drop-oldest';

export interface BufferLimits {
  maxRecords: number;
  maxBytes: number;
  onFull: OnFull;
}

/** Splits `block` after its first `n` records (1 ≤ n < block.records). */
export function splitBlock(block: Block, n: number): [Block, Block] {
  let pos = 0;
  for (let i = 0; i < n; i++) pos = block.data.indexOf(NEWLINE, pos) + 1;
  return [
    { data: block.data.subarray(0, pos), records: n, resent: block.resent },
    { data: block.data.subarray(pos), records: block.records - n, resent: block.resent },
  ];
}

/** How many leading records of `block` fit in `maxBytes` (at least 1). */
function recordsWithin(block: Block, maxBytes: number): number {
  let pos = 0;
  let n = 0;
  while (n < block.records) {
    const next = block.data.indexOf(NEWLINE, pos) + 1;
    if (n > 0 && next > maxBytes) break;
    pos = next;
    n++;
  }
  return n;
}

export class RecordBuffer {
  records = 0;
  bytes = 0;
  /** Records discarded by `drop-oldest`. */
  dropped = 0;
  ended = false;
  private blocks: Block[] = [];
  private readonly dataWaiters = new Waiters();
  private readonly roomWaiters = new Waiters();

  constructor(readonly limits: BufferLimits) {}

  get full(): boolean {
    return this.records >= this.limits.maxRecords || this.bytes >= this.limits.maxBytes;
  }

  get empty(): boolean {
    return this.records === 0;
  }

  /** Adds records; returns false if the buffer is now full (a `block` caller should pause). */
  push(block: Block): boolean {
    if (block.records === 0) return !this.full;
    this.blocks.push(block);
    this.records += block.records;
    this.bytes += block.data.length;
    if (this.limits.onFull === 'drop-oldest') this.dropOverflow();
    this.wakeData();
    return this.limits.onFull === 'drop-oldest' || !this.full;
  }

  /** No more input: takers get null once the buffer is empty. */
  end(): void {
    this.ended = true;
    this.wakeData();
  }

  /**
   * Removes up to `maxBytes` / `maxRecords` from the front (at least one record, even if it is
   * larger), or returns null if empty. Several blocks are joined into one write.
   */
  take(maxBytes: number, maxRecords = Number.POSITIVE_INFINITY): Block | null {
    const out = this.takeBlocks(maxBytes, maxRecords);
    if (out.length === 0) return null;
    if (out.length === 1) return out[0];
    let bytes = 0;
    let records = 0;
    for (const b of out) {
      bytes += b.data.length;
      records += b.records;
    }
    return {
      data: Buffer.concat(
        out.map((b) => b.data),
        bytes,
      ),
      records,
      resent: out.every((b) => b.resent),
    };
  }

  /** As `take`, but the blocks as they are (for a corked multi-write instead of one copy). */
  takeBlocks(maxBytes: number, maxRecords = Number.POSITIVE_INFINITY): Block[] {
    const out: Block[] = [];
    if (this.blocks.length === 0) return out;
    let bytes = 0;
    let records = 0;
    while (this.blocks.length > 0) {
      let b = this.blocks[0];
      const fits = bytes + b.data.length <= maxBytes && records + b.records <= maxRecords;
      if (!fits) {
        if (out.length > 0) break;
        // The first block alone is too big: take its leading records.
        const n = Math.min(recordsWithin(b, maxBytes), Math.max(1, maxRecords));
        if (n < b.records) {
          const [head, tail] = splitBlock(b, n);
          this.blocks[0] = tail;
          b = head;
        } else this.blocks.shift();
      } else this.blocks.shift();
      out.push(b);
      bytes += b.data.length;
      records += b.records;
    }
    this.records -= records;
    this.bytes -= bytes;
    if (!this.full) this.wakeRoom();
    return out;
  }

  /** Fires when records are waiting or the input has ended (at once if already so). */
  onData: Subscribe = (wake) => {
    if (this.records > 0 || this.ended) {
      wake();
      return () => {};
    }
    return this.dataWaiters.subscribe(wake);
  };

  /** Fires at the next push (or end), even if records are already waiting. */
  onMore: Subscribe = (wake) => {
    if (this.ended) {
      wake();
      return () => {};
    }
    return this.dataWaiters.subscribe(wake);
  };

  waitForData(): Promise<void> {
    return waitAny(this.onData);
  }

  /** Resolves when the buffer is no longer full. */
  waitForRoom(): Promise<void> {
    if (!this.full) return Promise.resolve();
    return waitAny(this.roomWaiters.subscribe);
  }

  private dropOverflow(): void {
    const { maxRecords, maxBytes } = this.limits;
    while (this.records > maxRecords || this.bytes > maxBytes) {
      const b = this.blocks[0];
      const excessRecords = this.records - maxRecords;
      const excessBytes = this.bytes - maxBytes;
      let n: number;
      if (b.records <= excessRecords || b.data.length <= excessBytes) n = b.records;
      else {
        // Drop just enough leading records of this block.
        n = Math.max(excessRecords, 0);
        let pos = 0;
        for (let i = 0; i < n; i++) pos = b.data.indexOf(NEWLINE, pos) + 1;
        while (pos < excessBytes) {
          pos = b.data.indexOf(NEWLINE, pos) + 1;
          n++;
        }
        n = Math.max(n, 1);
      }
      if (n >= b.records) {
        this.blocks.shift();
        this.bytes -= b.data.length;
      } else {
        const [head, tail] = splitBlock(b, n);
        this.blocks[0] = tail;
        this.bytes -= head.data.length;
      }
      this.records -= Math.min(n, b.records);
      this.dropped += Math.min(n, b.records);
    }
  }

  private wakeData(): void {
    this.dataWaiters.fire();
  }

  private wakeRoom(): void {
    this.roomWaiters.fire();
  }
}
