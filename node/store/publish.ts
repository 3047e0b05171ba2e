// Feeding live streams (reference §4.2 step 7): after a replicated segment is stored, its records
// are handed to the stream registry. OK Log kept the whole body in memory for this; here the new
// file is read back (it is in the page cache) in line-aligned chunks, one segment at a time, in
// the order they were stored, so memory stays bounded whatever the segment size.
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { openChunkReader } from './segment-reader.ts';
import type { SegmentEntry, StoreLog } from './store-log.ts';

export interface RecordSink {
  /** Sorted, newline-terminated records. */
  publish(records: Buffer): void;
}

const CHUNK = 1 << 20;

export class SegmentPublisher {
  private queue: Promise<void> = Promise.resolve();
  private pending = 0;
  constructor(
    private readonly log: StoreLog,
    private readonly sink: RecordSink,
    private readonly logger: Logger,
    /** Skip the work while nobody is streaming. */
    private readonly wanted: () => boolean = () => true,
    /** Segments waiting beyond this are skipped (a stream is live; it cannot wait for a backlog). */
    private readonly maxPending = 64,
  ) {}

  enqueue(entry: SegmentEntry): void {
    if (!this.wanted()) return;
    if (this.pending >= this.maxPending) {
      this.logger.warn(
        { segment: entry.base },
        'store: stream publishing backlog full, segment not streamed',
      );
      return;
    }
    const ref = this.log.ref(entry);
    this.pending++;
    this.queue = this.queue
      .then(() => this.publish(ref.path))
      .catch((err) =>
        this.logger.warn({ err: describeError(err), segment: entry.base }, 'store: stream publishing failed'),
      )
      .finally(() => {
        this.pending--;
        ref.release();
      });
  }

  private async publish(path: () => string): Promise<void> {
    const reader = await openChunkReader(this.log.fs, path, CHUNK);
    let carry: Buffer | null = null;
    try {
      for (;;) {
        const chunk = await reader.next();
        if (chunk === null) break;
        // The reader reuses its buffers: publish copies.
        const joined: Buffer = carry === null ? Buffer.from(chunk) : Buffer.concat([carry, chunk]);
        const end = joined.lastIndexOf(0x0a) + 1;
        carry = end < joined.length ? joined.subarray(end) : null;
        if (end > 0) this.sink.publish(joined.subarray(0, end));
      }
    } finally {
      await reader.close();
    }
  }

  /** Waits for queued segments to be published. */
  async drain(): Promise<void> {
    await this.queue;
  }
}
