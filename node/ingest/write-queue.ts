// The framed batches of one producer (a TCP or bulk connection) on their way to its Writer, and
// the node-wide budget they are charged to.
//
// A connection keeps reading while its batches are written (they queue up and go out together
// in one writev) and pauses its socket when its own queue is long. That bounds one connection; the
// budget bounds them all: once every connection's queued bytes together reach the budget, a
// connection that has anything queued pauses until its queue is written, so memory does not grow
// with the number of connections. A connection with nothing queued may always read one more
// chunk, so none can be starved by the others' queues.
import type { FrameBufferPool } from './buffer-pool.ts';
import type { Writer } from './writer.ts';

/** Default node-wide budget for queued framed bytes of all ingest connections. */
export const DEFAULT_INGEST_MEMORY = 64 * 1024 * 1024;

export class IngestMemory {
  used = 0;

  constructor(readonly limit: number) {}

  get full(): boolean {
    return this.used >= this.limit;
  }

  charge(n: number): void {
    this.used += n;
  }

  release(n: number): void {
    this.used -= n;
  }
}

export class WriteQueue {
  private queue: Buffer[] = [];
  private queuedRecords = 0;
  /** Bytes queued and not yet written (charged to the budget). */
  bytes = 0;
  /** A write failed: later batches are dropped (and counted by the caller). */
  failed = false;
  private writing: Promise<void> | null = null;

  constructor(
    private readonly writer: Writer,
    private readonly memory: IngestMemory,
    /** fsync every batch before the next is written (durable mode). */
    private readonly sync: boolean,
    /** Records of batches dropped after a failure. */
    private readonly onDropped: (records: number) => void = () => {},
    /** Where the framer's buffers go back once written (or dropped). */
    private readonly pool?: FrameBufferPool,
  ) {}

  get empty(): boolean {
    return this.queue.length === 0;
  }

  push(buf: Buffer, records: number): void {
    this.queue.push(buf);
    this.queuedRecords += records;
    this.bytes += buf.length;
    this.memory.charge(buf.length);
  }

  /** Writes everything queued, batch after batch; resolves once the queue is empty. */
  pump(): Promise<void> {
    // Started on a later microtask so `writing` is set before drain() can clear it.
    this.writing ??= Promise.resolve().then(() => this.drain());
    return this.writing;
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const bufs = this.queue;
      const records = this.queuedRecords;
      const bytes = this.bytes;
      this.queue = [];
      this.queuedRecords = 0;
      this.bytes = 0;
      try {
        if (this.failed) this.onDropped(records);
        else await this.writer.write(bufs, records, this.sync);
      } catch {
        this.failed = true; // logged and counted by the writer
      } finally {
        this.memory.release(bytes);
        this.pool?.give(bufs);
      }
    }
    this.writing = null; // synchronously with the emptiness check above: nothing is left behind
  }

  /** Drops what is queued and not yet being written (an upload refused). */
  clear(): void {
    this.memory.release(this.bytes);
    this.pool?.give(this.queue);
    this.queue = [];
    this.queuedRecords = 0;
    this.bytes = 0;
  }

  /** Resolves once nothing is queued or being written. */
  async idle(): Promise<void> {
    while (this.writing || this.queue.length > 0) await (this.writing ?? this.pump());
  }
}
