// LineFramer: turns the raw bytes of a connection (or HTTP body) into stored records
// `<ULID> <topic> <payload>\n` (reference §2), one output Buffer per input chunk so that a whole
// socket read becomes one write syscall.
//
// Hot path: newlines are found with Buffer#indexOf (memchr), the output is sized exactly and filled
// by copying, and no per-record objects are allocated. Memory stays bounded whatever the input: a
// line longer than `maxRecordSize` is never buffered — its bytes are skipped up to the next
// newline and it is counted as dropped.
import { topicLengthAt } from '../../shared/record.ts';
import { ULID_LENGTH, type UlidGenerator } from '../../shared/ulid.ts';
import type { FrameBufferPool } from './buffer-pool.ts';

export type TopicMode = 'static' | 'dynamic';

export interface FramerOptions {
  topicMode: TopicMode;
  /** Topic prepended in static mode (already validated). */
  topic: string;
  /** Longest accepted line, without its newline. */
  maxRecordSize: number;
  /**
   * Stamps ULIDs as records are framed. Null leaves 26 placeholder bytes per record and reports
   * their offsets, for writers shared by several producers that stamp in write order (acked HTTP).
   */
  ulids: UlidGenerator | null;
  /** Where output buffers come from (and go back to, once written); without it, fresh ones. */
  pool?: FrameBufferPool;
}

export interface Framed {
  /** The framed records, or null when the input completed none. */
  buf: Buffer | null;
  records: number;
  /** Offsets of each record's ULID in `buf` (only when framing without a generator). */
  ulidOffsets: number[] | null;
  /** Lines dropped by this call for exceeding maxRecordSize. */
  tooLarge: number;
  /** Dynamic mode: a line had no valid `<topic> ` prefix; framing stopped before it for good. */
  invalidTopic: boolean;
}

const NEWLINE = 0x0a;

export class LineFramer {
  private readonly dynamic: boolean;
  /**
   * Every record's prefix, `<ULID> ` plus `<topic> ` in static mode, copied in one call per record;
   * the generator keeps its ULID current (writeNextInPlace). Without a generator the ULID bytes are
   * placeholders, stamped later.
   */
  private readonly prefix: Buffer;
  private readonly prefixLength: number;
  private readonly max: number;
  private readonly ulids: UlidGenerator | null;
  private readonly pool: FrameBufferPool | undefined;
  /** The time of the read being framed: one clock reading per read, not per record. */
  private ms = 0;
  private partial: Buffer[] = [];
  private partialLength = 0;
  /** Inside an oversized line: discard until the next newline. */
  private skipping = false;
  private stopped = false;
  private newlines = new Int32Array(1024);

  constructor(opts: FramerOptions) {
    this.dynamic = opts.topicMode === 'dynamic';
    const topic = this.dynamic ? '' : `${opts.topic} `;
    this.prefix = Buffer.from(`${'0'.repeat(ULID_LENGTH)} ${topic}`, 'latin1');
    this.prefixLength = this.prefix.length;
    this.max = opts.maxRecordSize;
    this.ulids = opts.ulids;
    this.pool = opts.pool;
  }

  /** Bytes of an unfinished line held back (never more than maxRecordSize). */
  get pendingBytes(): number {
    return this.partialLength;
  }

  /** True once a dynamic-mode topic error stopped framing. */
  get failed(): boolean {
    return this.stopped;
  }

  /** Frames every line completed by `chunk`; the tail waits for the next chunk. */
  push(chunk: Buffer): Framed {
    const result: Framed = { buf: null, records: 0, ulidOffsets: null, tooLarge: 0, invalidTopic: false };
    if (this.stopped) return result;
    let n = 0;
    for (let p = 0; ; ) {
      const i = chunk.indexOf(NEWLINE, p);
      if (i < 0) break;
      if (n === this.newlines.length) {
        const grown = new Int32Array(n * 2);
        grown.set(this.newlines);
        this.newlines = grown;
      }
      this.newlines[n++] = i;
      p = i + 1;
    }
    if (n === 0) {
      this.hold(chunk, 0, result);
      return result;
    }
    const nl = this.newlines;
    const last = nl[n - 1];
    const size = this.partialLength + last + 1 + n * this.prefixLength;
    const out = this.pool ? this.pool.take(size).subarray(0, size) : Buffer.allocUnsafe(size);
    if (this.ulids) this.ms = this.ulids.clock();
    // The chunk's complete lines are copied once, to the end of `out`; each line then moves left
    // to its place with copyWithin (a memmove, no per-record view object). A line's place never
    // lies beyond where it was copied, and nothing written reaches a line not yet moved.
    const base = out.length - (last + 1);
    out.set(last + 1 === chunk.length ? chunk : chunk.subarray(0, last + 1), base);
    const offsets = this.ulids ? null : ([] as number[]);
    let o = 0;
    // The first line may end one split across reads, or an oversized one being skipped.
    const e0 = nl[0];
    if (this.skipping) {
      this.skipping = false; // the oversized line ends here
    } else if (this.partialLength > 0) {
      // The only copy of a line split across reads: join it once, here.
      this.partial.push(chunk.subarray(0, e0));
      const joined = Buffer.concat(this.partial, this.partialLength + e0);
      this.partial = [];
      this.partialLength = 0;
      o = Math.max(0, this.frameLine(joined, 0, joined.length, out, 0, offsets, result));
    } else {
      o = Math.max(0, this.frameLine(out, base, base + e0, out, 0, offsets, result));
    }
    // The rest: frameLine's work inline, with the loop's state in locals (the hot loop).
    const { max, dynamic, ulids, prefix, prefixLength, ms } = this;
    let records = 0;
    let tooLarge = 0;
    let s = e0 + 1;
    for (let k = 1; k < n && !this.stopped; k++) {
      const e = nl[k];
      const from = base + s;
      const len = e - s;
      s = e + 1;
      if (len > max) {
        tooLarge++;
        continue;
      }
      if (dynamic && topicLengthAt(out, from, from + len) < 0) {
        this.stopped = true;
        result.invalidTopic = true;
        break;
      }
      if (ulids) ulids.writeNextInPlace(prefix, 0, ms);
      else offsets?.push(o);
      out.set(prefix, o);
      o += prefixLength;
      out.copyWithin(o, from, from + len);
      o += len;
      out[o++] = NEWLINE;
      records++;
    }
    result.records += records;
    result.tooLarge += tooLarge;
    if (!this.stopped) this.hold(chunk, last + 1, result);
    if (result.records > 0) {
      result.buf = o === out.length ? out : out.subarray(0, o);
      result.ulidOffsets = offsets;
    }
    return result;
  }

  /** Clean end of input: a final line without newline is kept, and gets one. */
  end(): Framed {
    const result: Framed = { buf: null, records: 0, ulidOffsets: null, tooLarge: 0, invalidTopic: false };
    if (this.stopped || this.skipping || this.partialLength === 0) {
      this.reset();
      return result;
    }
    const line = Buffer.concat(this.partial, this.partialLength);
    this.reset();
    const out = Buffer.allocUnsafe(line.length + 1 + this.prefixLength);
    const offsets = this.ulids ? null : ([] as number[]);
    if (this.ulids) this.ms = this.ulids.clock();
    const w = this.frameLine(line, 0, line.length, out, 0, offsets, result);
    if (w > 0) {
      result.buf = out.subarray(0, w);
      result.ulidOffsets = offsets;
    }
    return result;
  }

  /** Input cut short (reset, shutdown): the unfinished line is dropped. Returns 1 if there was one. */
  discard(): number {
    const had = this.partialLength > 0 && !this.skipping && !this.stopped ? 1 : 0;
    this.reset();
    return had;
  }

  private reset(): void {
    this.partial = [];
    this.partialLength = 0;
    this.skipping = false;
  }

  /** Keeps `chunk[from..]` as the start of the next line, unless that makes it oversized. */
  private hold(chunk: Buffer, from: number, result: Framed): void {
    const len = chunk.length - from;
    if (len === 0 || this.skipping) return;
    if (this.partialLength + len > this.max) {
      this.partial = [];
      this.partialLength = 0;
      this.skipping = true;
      result.tooLarge++;
      return;
    }
    // Copy: the socket's chunk must not be pinned (it may be a slice of a much larger buffer).
    this.partial.push(Buffer.from(chunk.subarray(from)));
    this.partialLength += len;
  }

  /** Writes one record for `src[from..to)` at `out[o]`; returns bytes written, 0 if dropped, -1 to stop. */
  private frameLine(
    src: Buffer,
    from: number,
    to: number,
    out: Buffer,
    o: number,
    offsets: number[] | null,
    result: Framed,
  ): number {
    const len = to - from;
    if (len > this.max) {
      result.tooLarge++;
      return 0;
    }
    if (this.dynamic && topicLengthAt(src, from, to) < 0) {
      this.stopped = true;
      result.invalidTopic = true;
      return -1;
    }
    const start = o;
    if (this.ulids) this.ulids.writeNextInPlace(this.prefix, 0, this.ms);
    else offsets?.push(o);
    out.set(this.prefix, o);
    o += this.prefixLength;
    if (src === out) out.copyWithin(o, from, to);
    else out.set(src.subarray(from, to), o);
    o += len;
    out[o++] = NEWLINE;
    result.records++;
    return o - start;
  }
}

/** Fills the placeholder ULIDs of a framed buffer, in order (see FramerOptions.ulids). */
export function stampUlids(buf: Buffer, offsets: readonly number[], ulids: UlidGenerator): void {
  for (const o of offsets) ulids.writeNext(buf, o);
}
