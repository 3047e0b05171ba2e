// Output buffers of the line framer, reused once their batch is on its way to the disk.
//
// A fast connection frames every socket read (≤ 64 KiB) into a fresh buffer of about 80 KiB. Each
// such buffer is memory outside the V8 heap, and V8 answers a steady stream of it with full
// (mark-compact) collections: at a million records a second they took a fifth of the ingest
// thread. Reused buffers cost nothing to allocate or collect. Only buffers this pool handed out
// are taken back, and only by the one owner that knows the write is done (WriteQueue).
export class FrameBufferPool {
  private readonly free: Buffer[] = [];
  /** Buffers handed out and not yet given back. */
  private readonly lent = new WeakSet<ArrayBufferLike>();

  /**
   * @param size bytes of each pooled buffer; larger requests are allocated as usual
   * @param keep most idle buffers kept
   */
  constructor(
    readonly size = 128 * 1024,
    private readonly keep = 64,
  ) {}

  /**
   * A buffer of at least `n` bytes (contents undefined). Only requests of at least half the pooled
   * size get a pooled buffer: a small batch (a trickle of lines, one read each) holding a whole
   * pooled buffer would make the queues' byte budgets, which count what is framed, hold many
   * times that in memory.
   */
  take(n: number): Buffer {
    if (n > this.size || n < this.size / 2) return Buffer.allocUnsafe(n);
    const b = this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
    this.lent.add(b.buffer);
    return b;
  }

  /** Takes back buffers (or views of them) that nothing reads or writes any more. */
  give(bufs: readonly Buffer[]): void {
    for (const b of bufs) {
      // Not ours, or given back already (a buffer given back twice is taken once).
      if (!this.lent.delete(b.buffer)) continue;
      if (this.free.length < this.keep) this.free.push(Buffer.from(b.buffer, 0, this.size));
    }
  }
}
