// Printing stored records (`<ULID> <topic> <payload>\n`) the way `oklog query` / `stream` do
// (reference §8.1): plain (first 27 bytes removed), -ulid (as stored), -time (local RFC 3339 time
// instead of the ULID) or JSON. Works chunk by chunk so results stream through in bounded memory.
import { TooLargeError } from '../shared/errors.ts';
import { NEWLINE, RECORD_PREFIX_LENGTH, SPACE } from '../shared/record.ts';
import { isCanonicalUlidAt, ULID_LENGTH, ulidTime } from '../shared/ulid.ts';

export type OutputFormat = 'plain' | 'ulid' | 'time' | 'json';

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** RFC 3339 in the local zone with second precision, as Go's `time.RFC3339` (`Z` when UTC). */
export function formatRfc3339Local(ms: number): string {
  const d = new Date(ms);
  const off = -d.getTimezoneOffset();
  const zone =
    off === 0
      ? 'Z'
      : `${off < 0 ? '-' : '+'}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  return (
    `${pad(d.getFullYear(), 4)}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` +
    `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${zone}`
  );
}

export interface PrinterOptions {
  format: OutputFormat;
  /** Stop after this many records (0 = no limit); enforced here too, for servers without `limit`. */
  limit?: number;
  /** Print only records of this topic; enforced here too, for servers without `topic`. */
  topic?: string;
  /** Refuse a single line longer than this (a misbehaving server must not grow memory forever). */
  maxLineBytes?: number;
}

/** Turns body chunks into output chunks. `push` returns what to write (or null). */
export class RecordPrinter {
  /** Records printed so far. */
  count = 0;
  /** True once `limit` records were printed: the caller should stop reading. */
  done = false;
  private carry: Buffer | null = null;
  private readonly limit: number;
  private readonly topic: Buffer | null;
  private readonly maxLine: number;
  private readonly format: OutputFormat;
  private out: Buffer[] = [];
  private lastSecond = Number.NaN;
  private lastSecondText: Buffer = Buffer.alloc(0);

  constructor(options: PrinterOptions) {
    this.format = options.format;
    this.limit = options.limit && options.limit > 0 ? options.limit : Number.POSITIVE_INFINITY;
    this.topic = options.topic ? Buffer.from(`${options.topic} `) : null;
    this.maxLine = options.maxLineBytes ?? 64 << 20;
  }

  push(chunk: Buffer): Buffer | null {
    if (this.done) return null;
    let start = 0;
    if (this.carry) {
      const nl = chunk.indexOf(NEWLINE);
      if (nl < 0) {
        this.appendCarry(chunk);
        return null;
      }
      const line = Buffer.concat([this.carry, chunk.subarray(0, nl + 1)]);
      this.carry = null;
      this.line(line, 0, line.length - 1);
      start = nl + 1;
    }
    while (!this.done) {
      const nl = chunk.indexOf(NEWLINE, start);
      if (nl < 0) {
        if (start < chunk.length) this.appendCarry(chunk.subarray(start));
        break;
      }
      this.line(chunk, start, nl);
      start = nl + 1;
    }
    return this.flush();
  }

  /** At end of body: a final line without newline is printed too. */
  end(): Buffer | null {
    if (this.carry && !this.done) {
      const line = Buffer.concat([this.carry, Buffer.from('\n')]);
      this.carry = null;
      this.line(line, 0, line.length - 1);
    }
    return this.flush();
  }

  private appendCarry(part: Buffer): void {
    const len = (this.carry?.length ?? 0) + part.length;
    if (len > this.maxLine) throw new TooLargeError(`record longer than ${this.maxLine} bytes in response`);
    // Copy: `part` may be a view of a large chunk that would otherwise stay alive.
    this.carry = this.carry ? Buffer.concat([this.carry, part]) : Buffer.from(part);
  }

  private flush(): Buffer | null {
    if (this.out.length === 0) return null;
    const b = this.out.length === 1 ? this.out[0] : Buffer.concat(this.out);
    this.out = [];
    return b;
  }

  /** One record: `buf[start..nl]`, where `buf[nl]` is its newline. */
  private line(buf: Buffer, start: number, nl: number): void {
    if (this.topic && !this.hasTopic(buf, start, nl)) return;
    this.count++;
    if (this.count >= this.limit) this.done = true;
    const valid = nl - start >= ULID_LENGTH && isCanonicalUlidAt(buf, start);
    switch (this.format) {
      case 'ulid':
        this.out.push(buf.subarray(start, nl + 1));
        return;
      case 'plain':
        this.out.push(buf.subarray(Math.min(start + RECORD_PREFIX_LENGTH, nl), nl + 1));
        return;
      case 'time':
        if (!valid) {
          this.out.push(buf.subarray(start, nl + 1));
          return;
        }
        this.out.push(this.secondText(ulidTime(buf, start)), buf.subarray(start + ULID_LENGTH, nl + 1));
        return;
      case 'json':
        this.out.push(Buffer.from(`${JSON.stringify(recordJson(buf, start, nl, valid))}\n`));
        return;
    }
  }

  private hasTopic(buf: Buffer, start: number, nl: number): boolean {
    const t = this.topic!;
    const at = start + RECORD_PREFIX_LENGTH;
    return nl - at >= t.length && buf.compare(t, 0, t.length, at, at + t.length) === 0;
  }

  private secondText(ms: number): Buffer {
    const sec = Math.floor(ms / 1000);
    if (sec !== this.lastSecond) {
      this.lastSecond = sec;
      this.lastSecondText = Buffer.from(formatRfc3339Local(ms));
    }
    return this.lastSecondText;
  }
}

export interface RecordJson {
  ulid: string;
  /** RFC 3339 UTC with milliseconds, from the ULID. */
  time: string | null;
  topic: string;
  /** The payload decoded as UTF-8 (invalid sequences become U+FFFD), without the newline. */
  message: string;
}

function recordJson(buf: Buffer, start: number, nl: number, valid: boolean): RecordJson {
  if (!valid) return { ulid: '', time: null, topic: '', message: buf.toString('utf8', start, nl) };
  const body = start + RECORD_PREFIX_LENGTH;
  const sp = buf.indexOf(SPACE, body);
  const topicEnd = sp < 0 || sp > nl ? nl : sp;
  return {
    ulid: buf.toString('latin1', start, start + ULID_LENGTH),
    time: new Date(ulidTime(buf, start)).toISOString(),
    topic: buf.toString('utf8', Math.min(body, nl), topicEnd),
    message: topicEnd < nl ? buf.toString('utf8', topicEnd + 1, nl) : '',
  };
}
