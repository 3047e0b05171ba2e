// Read-ahead with a byte budget: pulls from a chunk source into a queue until `maxBytes` are
// waiting, then pauses until the consumer takes some. This is how segment scans run ahead of the
// merge (OK Log's per-segment pipe of -store.segment-buffer-size) without unbounded memory.

export class Prefetch implements AsyncIterableIterator<Buffer> {
  private queue: Buffer[] = [];
  private queued = 0;
  private done = false;
  private closed = false;
  private error: unknown = null;
  private pumping = false;
  private finished = false;
  private wake: (() => void) | null = null;

  constructor(
    private readonly src: AsyncIterator<Buffer>,
    private readonly maxBytes: number,
    /** Called once, when the consumer has everything or stops early (frees a scheduler slot). */
    private readonly onFinish: () => void = () => {},
  ) {
    void this.pump();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private async pump(): Promise<void> {
    if (this.pumping || this.done || this.closed) return;
    this.pumping = true;
    try {
      while (!this.closed && this.queued < this.maxBytes) {
        const r = await this.src.next();
        if (r.done) {
          this.done = true;
          break;
        }
        if (this.closed) break;
        this.queue.push(r.value);
        this.queued += r.value.length;
        this.notify();
      }
    } catch (err) {
      this.error = err;
      this.done = true;
    } finally {
      this.pumping = false;
      this.notify();
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.onFinish();
  }

  async next(): Promise<IteratorResult<Buffer>> {
    for (;;) {
      if (this.queue.length > 0) {
        const value = this.queue.shift()!;
        this.queued -= value.length;
        if (!this.done && !this.pumping) void this.pump();
        return { value, done: false };
      }
      if (this.error !== null) {
        const err = this.error;
        this.error = null;
        this.finish();
        throw err;
      }
      if (this.done || this.closed) {
        this.finish();
        return { value: undefined, done: true };
      }
      if (!this.pumping) void this.pump();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  async return(): Promise<IteratorResult<Buffer>> {
    if (!this.closed) {
      this.closed = true;
      this.queue = [];
      this.queued = 0;
      this.notify();
      // Closes the source (its file) once any read in flight settles.
      await Promise.resolve(this.src.return?.()).catch(() => {});
    }
    this.finish();
    return { value: undefined, done: true };
  }
}
