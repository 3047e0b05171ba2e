// stdin chunks → blocks of framed records `<prefix><line>\n`. Works on bytes only: nothing is
// decoded or formatted, so `%` and any binary bytes pass through untouched (OK Log passed the line
// to Fprintf as a format string, §11.2 item 13). Like Go's bufio.ScanLines a trailing `\r` is
// stripped and a last line without newline is still a record. Records longer than the maximum
// (prefix included: the ingester measures what it receives) are dropped and counted instead of
// ending the process.
//
// The common case (no prefix, no CR) is zero-copy: a block is a view of the stdin chunk.
import { NEWLINE } from '../../shared/record.ts';

const CR = 0x0d;
const NL_BUF = Buffer.from([NEWLINE]);

/** Whole framed records, each ending in `\n` (and containing no other `\n`). */
export interface Block {
  data: Buffer;
  records: number;
  /** Set once the block was re-sent from the resend window (so it is not re-sent twice). */
  resent?: boolean;
}

export interface SplitterOptions {
  /** Bytes put before every line (`-prefix` words joined by spaces, plus one space). */
  prefix?: Buffer;
  /** Longest record accepted: prefix plus line, without its newline (and a stripped `\r`). */
  maxRecordSize: number;
}

export class LineSplitter {
  /** Lines dropped because they were longer than `maxRecordSize`. */
  droppedTooLong = 0;
  private readonly prefix: Buffer | null;
  /** Longest line, without the prefix that goes before it. */
  private readonly max: number;
  private carry: Buffer[] = [];
  private carryLen = 0;
  /** Inside an over-long line: skip until its newline. */
  private discarding = false;
  private parts: Buffer[] = [];
  private records = 0;

  constructor(options: SplitterOptions) {
    this.prefix = options.prefix && options.prefix.length > 0 ? options.prefix : null;
    // A record the ingester would drop must be dropped (and counted) here, where it is visible.
    this.max = options.maxRecordSize - (this.prefix?.length ?? 0);
  }

  /** The records `chunk` completes, as one block (null if none). */
  push(chunk: Buffer): Block | null {
    return join(this.split(chunk));
  }

  /**
   * The records `chunk` completes, as blocks that need no copying: a line carried over from the
   * previous chunk is its own small block, the rest a view of `chunk` (unless prefixed or with CRs).
   */
  split(chunk: Buffer): Block[] {
    const blocks: Block[] = [];
    let pos = 0;
    if (this.discarding || this.carryLen > 0) {
      const nl = chunk.indexOf(NEWLINE);
      if (nl < 0) {
        this.hold(chunk);
        return blocks;
      }
      if (this.discarding) {
        this.discarding = false;
        this.droppedTooLong++;
      } else {
        this.carry.push(chunk.subarray(0, nl));
        const line = Buffer.concat(this.carry, this.carryLen + nl);
        this.carry = [];
        this.carryLen = 0;
        this.emit(line, 0, line.length > 0 && line[line.length - 1] === CR ? line.length - 1 : line.length);
        this.cut(blocks);
      }
      pos = nl + 1;
    }

    // `run` is a stretch of lines that need no change and can be passed on as one view.
    let runStart = pos;
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, pos);
      if (nl < 0) break;
      const cr = nl > pos && chunk[nl - 1] === CR;
      const len = nl - pos - (cr ? 1 : 0);
      if (len > this.max) {
        this.flushRun(chunk, runStart, pos);
        this.droppedTooLong++;
        runStart = nl + 1;
      } else if (cr || this.prefix) {
        this.flushRun(chunk, runStart, pos);
        this.emit(chunk, pos, pos + len);
        runStart = nl + 1;
      } else {
        this.records++;
      }
      pos = nl + 1;
    }
    this.flushRun(chunk, runStart, pos);
    if (pos < chunk.length) this.hold(chunk.subarray(pos));
    this.cut(blocks);
    return blocks;
  }

  /** At EOF: the last line, if it had no newline. */
  end(): Block | null {
    if (this.discarding) {
      this.discarding = false;
      this.droppedTooLong++;
    } else if (this.carryLen > 0) {
      const line = Buffer.concat(this.carry, this.carryLen);
      this.carry = [];
      this.carryLen = 0;
      const len = line[line.length - 1] === CR ? line.length - 1 : line.length;
      if (len > this.max) this.droppedTooLong++;
      else this.emit(line, 0, len);
    }
    const blocks: Block[] = [];
    this.cut(blocks);
    return join(blocks);
  }

  /**
   * Input stopped mid-stream (a signal): the unterminated last line is a torn write of the
   * producer, not a record, so it is discarded. Returns its length in bytes (0 if none).
   */
  abandon(): number {
    const n = this.carryLen;
    if (this.discarding) {
      this.discarding = false;
      this.droppedTooLong++;
    }
    this.carry = [];
    this.carryLen = 0;
    return n;
  }

  /** Keeps a partial line; past the maximum (+1 for a possible `\r`) it is dropped instead. */
  private hold(part: Buffer): void {
    if (this.discarding) return;
    if (this.carryLen + part.length > this.max + 1) {
      this.carry = [];
      this.carryLen = 0;
      this.discarding = true;
      return;
    }
    // Copy: a view would keep the whole 64 KiB stdin chunk alive for a few bytes.
    this.carry.push(Buffer.from(part));
    this.carryLen += part.length;
  }

  private flushRun(chunk: Buffer, start: number, end: number): void {
    if (end > start) this.parts.push(chunk.subarray(start, end));
  }

  /** One record from `buf[start..end)` (no newline, no `\r`): prefix + line + `\n`. */
  private emit(buf: Buffer, start: number, end: number): void {
    if (end - start > this.max) {
      this.droppedTooLong++;
      return;
    }
    if (this.prefix) this.parts.push(this.prefix);
    if (end > start) this.parts.push(buf.subarray(start, end));
    this.parts.push(NL_BUF);
    this.records++;
  }

  /** Moves the records framed so far into `blocks` as one block. */
  private cut(blocks: Block[]): void {
    if (this.records > 0) {
      const data = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
      blocks.push({ data, records: this.records });
    }
    this.parts = [];
    this.records = 0;
  }
}

function join(blocks: Block[]): Block | null {
  if (blocks.length <= 1) return blocks[0] ?? null;
  let records = 0;
  for (const b of blocks) records += b.records;
  return { data: Buffer.concat(blocks.map((b) => b.data)), records };
}
