// Reading segment files: a chunked reader (reused buffers, the next reads in flight while the
// current chunk is searched) and the scan that filters records out of it. This is the query hot
// path, built like grep: a plain term is searched for in the whole chunk first (Buffer#indexOf),
// and only a hit costs finding its line's bounds; lines without the term are never looked at.
import { type FileHandle, open } from 'node:fs/promises';
import { NEWLINE, SPACE } from '../../shared/record.ts';
import { ULID_LENGTH } from '../../shared/ulid.ts';
import type { FileSystem } from '../fs/index.ts';
import type { RecordMatcher } from './filter.ts';
import { compareUlid, countLines } from './lines.ts';

/** Sequential chunks of a file. A returned Buffer is valid only until the next call. */
export interface ChunkReader {
  next(): Promise<Buffer | null>;
  close(): Promise<void>;
}

const MIN_CHUNK = 64 * 1024;

/**
 * Positional reads on a real file, READ_AHEAD of them in flight while a chunk is scanned: reads
 * run on libuv's thread pool, so on a loaded machine one read at a time leaves the scan idle.
 * Buffers are reused in a ring (they stay small enough to be cache-hot when scanned).
 */
const READ_AHEAD = 3;

class FileChunkReader implements ChunkReader {
  private readonly bufs: Buffer[];
  private readonly inflight: { buf: Buffer; pos: number; done: Promise<number> }[] = [];
  private next_ = 0;
  private position = 0;
  private eof = false;
  private closed = false;
  constructor(
    private readonly fh: FileHandle,
    private readonly size: number,
  ) {
    this.bufs = Array.from({ length: READ_AHEAD + 1 }, () => Buffer.allocUnsafe(size));
  }
  private issue(): void {
    // The ring slot read into now was handed out READ_AHEAD + 1 calls ago, or never.
    const buf = this.bufs[this.next_];
    this.next_ = (this.next_ + 1) % this.bufs.length;
    const pos = this.position;
    this.position += this.size;
    const done = this.fh.read(buf, 0, this.size, pos).then((r) => r.bytesRead);
    done.catch(() => {}); // awaited later, or dropped on close: never unhandled
    this.inflight.push({ buf, pos, done });
  }
  async next(): Promise<Buffer | null> {
    if (this.closed || this.eof) return null;
    while (this.inflight.length < READ_AHEAD) this.issue();
    const r = this.inflight.shift()!;
    const n = await r.done;
    if (n < this.size) {
      // End of file (or a short read): reads issued beyond it are dropped and, if the file goes
      // on, reissued from where this one stopped.
      for (const x of this.inflight.splice(0)) await x.done.catch(() => 0);
      this.position = r.pos + n;
      this.next_ = (this.bufs.indexOf(r.buf) + 1) % this.bufs.length;
      if (n === 0) {
        this.eof = true;
        return null;
      }
    }
    this.issue();
    return r.buf.subarray(0, n);
  }
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const x of this.inflight.splice(0)) await x.done.catch(() => 0);
    await this.fh.close().catch(() => {});
  }
}

/** Any FileSystem: its read stream's chunks. */
class StreamChunkReader implements ChunkReader {
  private readonly it: AsyncIterator<Buffer>;
  private readonly stream: NodeJS.ReadableStream & { destroy(): void };
  constructor(fs: FileSystem, path: string, size: number) {
    this.stream = fs.createReadStream(path, { highWaterMark: size }) as NodeJS.ReadableStream & {
      destroy(): void;
    };
    this.it = (this.stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }
  async next(): Promise<Buffer | null> {
    const r = await this.it.next();
    return r.done ? null : r.value;
  }
  async close(): Promise<void> {
    this.stream.destroy();
  }
}

/**
 * Opens a segment for reading. `path` is asked again when the file is not found, because the
 * compacter may have renamed it (`.flushed` → `.reading` → …) between selection and open; the
 * store log keeps the current name and defers deletion while a query holds the segment.
 * `settled` (SegmentRef.settled) resolves once a rename in progress is in the log: a file renamed
 * on disk whose new name the log has not recorded yet is not found under the unchanged path.
 */
export async function openChunkReader(
  fs: FileSystem,
  path: () => string,
  chunkSize: number,
  settled?: () => Promise<void>,
): Promise<ChunkReader> {
  const size = Math.max(MIN_CHUNK, chunkSize);
  if (fs.kind !== 'real') return new StreamChunkReader(fs, path(), size);
  for (let attempt = 0; ; attempt++) {
    const p = path();
    try {
      return new FileChunkReader(await open(p, 'r'), size);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 4) throw err;
      if (path() === p) await settled?.();
      if (path() === p) throw err;
    }
  }
}

export interface ScanFilter {
  /** Decides on one record `buf[start..end)` (newline excluded). */
  matcher: RecordMatcher;
  /**
   * Bytes every matching record contains (the plain term, or `topic ` for a topic filter): the
   * scan searches for them across the chunk and looks at a line only around a hit.
   */
  needle: Buffer | null;
  /** Every record matches (no term, no topic): ranges are copied without looking at lines. */
  all: boolean;
  /**
   * The matcher can take long on one record (a regex: microseconds per line, milliseconds at the
   * pattern caps): the scan reads the clock after every record it runs it on, not every 32.
   */
  costly?: boolean;
  /** Inclusive ULID bounds, 26 bytes each. */
  from: Buffer;
  to: Buffer;
  /**
   * Queries: lines that are not records (shorter than a ULID and a space, or without a valid
   * ULID) are skipped and counted, also where the scan would copy a range without looking at its
   * lines; such a line can never match (§4.8), and passing it on would make the merge reject the
   * whole answer. Without it (compaction) ranges are copied as they are, for the caller to check.
   */
  skipMalformed?: boolean;
}

const MIN_LINE = ULID_LENGTH + 1;

/** 1 for the bytes of a canonical (upper-case Crockford) ULID. */
const ULID_CHAR = new Uint8Array(256);
for (const c of '0123456789ABCDEFGHJKMNPQRSTVWXYZ') ULID_CHAR[c.charCodeAt(0)] = 1;

/**
 * A record's start: a canonical ULID and a space, the line at least that long. Unrolled (no
 * loop): an export checks every line with it, and this costs it about half as much as a loop.
 */
function isRecordAt(b: Buffer, ls: number, le: number): boolean {
  if (le - ls < MIN_LINE || b[ls + ULID_LENGTH] !== SPACE || b[ls] > 0x37) return false;
  const t = ULID_CHAR;
  return (
    (t[b[ls]] &
      t[b[ls + 1]] &
      t[b[ls + 2]] &
      t[b[ls + 3]] &
      t[b[ls + 4]] &
      t[b[ls + 5]] &
      t[b[ls + 6]] &
      t[b[ls + 7]] &
      t[b[ls + 8]] &
      t[b[ls + 9]] &
      t[b[ls + 10]] &
      t[b[ls + 11]] &
      t[b[ls + 12]] &
      t[b[ls + 13]] &
      t[b[ls + 14]] &
      t[b[ls + 15]] &
      t[b[ls + 16]] &
      t[b[ls + 17]] &
      t[b[ls + 18]] &
      t[b[ls + 19]] &
      t[b[ls + 20]] &
      t[b[ls + 21]] &
      t[b[ls + 22]] &
      t[b[ls + 23]] &
      t[b[ls + 24]] &
      t[b[ls + 25]]) ===
    1
  );
}

/**
 * Collects matched line ranges of the current chunk, coalescing adjacent ones, then copies them
 * out in one go (the reader reuses its buffers).
 */
export class Collector {
  private parts: Buffer[] = [];
  private bytes = 0;
  private runBuf: Buffer | null = null;
  private runStart = 0;
  private runEnd = 0;
  /** ULID-only output (`ULID\n` per record) for counting across nodes; null for whole records. */
  private ids: Buffer | null = null;
  private idsLen = 0;

  constructor(ulidsOnly = false) {
    if (ulidsOnly) this.ids = Buffer.allocUnsafe(64 * 1024);
  }

  /** Whole lines `buf[start..end)` (`end` just past a newline) matched. */
  add(buf: Buffer, start: number, end: number): void {
    if (this.ids !== null) {
      this.addIds(buf, start, end);
      return;
    }
    if (buf === this.runBuf && start === this.runEnd) {
      this.runEnd = end;
      return;
    }
    this.flushRun();
    this.runBuf = buf;
    this.runStart = start;
    this.runEnd = end;
  }

  private addIds(buf: Buffer, start: number, end: number): void {
    for (let ls = start; ls < end; ) {
      const le = buf.indexOf(NEWLINE, ls);
      if (le < 0 || le >= end) break;
      if (this.idsLen + ULID_LENGTH + 1 > (this.ids as Buffer).length) {
        const bigger = Buffer.allocUnsafe((this.ids as Buffer).length * 2);
        (this.ids as Buffer).copy(bigger, 0, 0, this.idsLen);
        this.ids = bigger;
      }
      const ids = this.ids as Buffer;
      buf.copy(ids, this.idsLen, ls, ls + ULID_LENGTH);
      ids[this.idsLen + ULID_LENGTH] = NEWLINE;
      this.idsLen += ULID_LENGTH + 1;
      ls = le + 1;
    }
  }

  private flushRun(): void {
    if (this.ids !== null && this.idsLen > 0) {
      // The ids buffer is reused: what is handed on is a copy of its filled part.
      this.parts.push(Buffer.from(this.ids.subarray(0, this.idsLen)));
      this.bytes += this.idsLen;
      this.idsLen = 0;
    }
    if (this.runBuf === null) return;
    this.parts.push(this.runBuf.subarray(this.runStart, this.runEnd));
    this.bytes += this.runEnd - this.runStart;
    this.runBuf = null;
  }
  /** Bytes collected so far. */
  get size(): number {
    return this.bytes + this.idsLen + (this.runBuf === null ? 0 : this.runEnd - this.runStart);
  }

  /** Counts the records collected (instead of copying them) and resets. */
  countAndClear(): number {
    this.flushRun();
    let n = 0;
    for (const p of this.parts) n += countLines(p);
    this.parts = [];
    this.bytes = 0;
    return n;
  }

  /** Copies everything collected into `target` at `off` (it must fit), resets, returns the count. */
  takeInto(target: Buffer, off: number): number {
    this.flushRun();
    let n = 0;
    for (const p of this.parts) n += p.copy(target, off + n);
    this.parts = [];
    this.bytes = 0;
    return n;
  }

  /** A fresh copy of everything collected (or null), and reset. */
  take(alloc: (n: number) => Buffer = Buffer.allocUnsafe): Buffer | null {
    this.flushRun();
    if (this.bytes === 0) return null;
    const out = alloc(this.bytes);
    let off = 0;
    for (const p of this.parts) off += p.copy(out, off);
    this.parts = [];
    this.bytes = 0;
    return out;
  }
}

/** A region scan's answer: stop (records past `to`; files are sorted), or where to resume. */
export const STOP = -1;
/** CPU time a scan may take before it lets other requests run (a regex over long lines is slow). */
const SLICE_MS = 10;
/** Lines (or hits) between clock reads. */
const CLOCK_EVERY = 32;
/** Bytes sampled to choose a rare needle byte. */
const RARE_SAMPLE = 64 * 1024;

export class Scanner {
  /** True when the segment lies inside [from, to]: no per-record time checks. */
  private readonly timeAll: boolean;
  /** Offset in the needle of its rarest byte (searched from there on); -1: not chosen yet. */
  private rareAt = -1;
  private tail: Buffer | null = null;
  /** Lines skipped because they are not records (see ScanFilter.skipMalformed). */
  malformed = 0;
  constructor(
    private readonly f: ScanFilter,
    low: Buffer,
    high: Buffer,
    private readonly out: Collector,
  ) {
    this.timeAll = compareUlid(low, 0, f.from, 0) >= 0 && compareUlid(high, 0, f.to, 0) <= 0;
  }

  /**
   * Scans the whole lines in `buf[start..end)` (`end` just past a newline) until done (returns
   * `end`), past `to` (STOP) or past `deadline` (returns where to resume: a line start).
   */
  region(buf: Buffer, start: number, end: number, deadline: number): number {
    const f = this.f;
    if (!this.timeAll) {
      // Sorted files: skip a region wholly before `from`, stop at one wholly after `to`. Only a
      // real record's ULID says so: a stray line is not trusted to bound the others.
      const firstEnd = buf.indexOf(NEWLINE, start);
      if (isRecordAt(buf, start, firstEnd) && compareUlid(buf, start, f.to, 0) > 0) return STOP;
      const lastStart = end - 1 > start ? buf.lastIndexOf(NEWLINE, end - 2) + 1 : start;
      const ls = Math.max(start, lastStart);
      if (isRecordAt(buf, ls, end - 1) && compareUlid(buf, ls, f.from, 0) < 0) return end;
    }
    if (f.all && this.timeAll) {
      if (f.skipMalformed) return this.copyRecords(buf, start, end, deadline);
      this.out.add(buf, start, end);
      return end;
    }
    return f.needle !== null && !f.all
      ? this.byNeedle(buf, start, end, f.needle, deadline)
      : this.byLine(buf, start, end, deadline);
  }

  /**
   * Every record of the region, as runs of lines; a line that is not a record is left out (an
   * export looks at no line otherwise: this walk costs it about a tenth of its time).
   */
  private copyRecords(buf: Buffer, start: number, end: number, deadline: number): number {
    let run = start;
    let lines = 0;
    for (let ls = start; ls < end; ) {
      const le = buf.indexOf(NEWLINE, ls);
      if (!isRecordAt(buf, ls, le)) {
        if (ls > run) this.out.add(buf, run, ls);
        this.malformed++;
        run = le + 1;
      }
      ls = le + 1;
      if (++lines % 4096 === 0 && performance.now() > deadline) {
        if (ls > run) this.out.add(buf, run, ls);
        return ls;
      }
    }
    if (end > run) this.out.add(buf, run, end);
    return end;
  }

  /**
   * Plain-term search. Buffer#indexOf is fast when the term's first byte is rare in the data (it
   * skips with memchr on that byte) and several times slower when it is common: "ZQX…" over
   * log lines that all hold a "…Z" timestamp. So, like grep and the memchr crate, the scan looks
   * for the term from its rarest byte on (measured on the segment's first bytes) and checks the
   * bytes before it at each hit.
   */
  private byNeedle(buf: Buffer, start: number, end: number, needle: Buffer, deadline: number): number {
    const f = this.f;
    if (this.rareAt < 0) this.chooseRare(buf, start, end, needle);
    const len = needle.length;
    const rareAt = this.rareAt;
    const tail = this.tail ?? needle;
    const every = f.costly ? 1 : CLOCK_EVERY;
    let pos = start;
    let hits = 0;
    while (pos < end) {
      const j = buf.indexOf(tail, pos + rareAt);
      if (j < 0) break;
      const i = j - rareAt;
      if (i + len > end) break;
      if (rareAt > 0 && buf.compare(needle, 0, rareAt, i, j) !== 0) {
        pos = i + 1;
        continue;
      }
      const ls = i === 0 ? 0 : Math.max(start, buf.lastIndexOf(NEWLINE, i - 1) + 1);
      const le = buf.indexOf(NEWLINE, i);
      pos = le + 1;
      if (!isRecordAt(buf, ls, le)) {
        this.malformed++;
        continue;
      }
      if (!this.timeAll) {
        if (compareUlid(buf, ls, f.to, 0) > 0) return STOP;
        if (compareUlid(buf, ls, f.from, 0) < 0) continue;
      }
      if (f.matcher(buf, ls, le)) this.out.add(buf, ls, le + 1);
      // A topic and a regex: every line of the topic is a hit, and each costs a regex run.
      if (++hits % every === 0 && performance.now() > deadline) return pos;
    }
    return end;
  }

  /** Picks the needle byte least frequent in a sample of the data; the search starts there. */
  private chooseRare(buf: Buffer, start: number, end: number, needle: Buffer): void {
    const n = Math.min(end - start, RARE_SAMPLE);
    const counts = new Uint32Array(256);
    for (let i = start; i < start + n; i++) counts[buf[i]]++;
    let best = 0;
    for (let i = 1; i < needle.length; i++) if (counts[needle[i]] < counts[needle[best]]) best = i;
    this.rareAt = best;
    this.tail = best === 0 ? needle : needle.subarray(best);
  }

  private byLine(buf: Buffer, start: number, end: number, deadline: number): number {
    const f = this.f;
    // A regex can cost microseconds (at the pattern caps, milliseconds) per line: read the clock
    // on every line then, so a slice ends within one record of its deadline.
    const every = f.all ? CLOCK_EVERY : 1;
    let ls = start;
    let lines = 0;
    while (ls < end) {
      const le = buf.indexOf(NEWLINE, ls);
      const next = le + 1;
      if (isRecordAt(buf, ls, le)) {
        if (!this.timeAll) {
          if (compareUlid(buf, ls, f.to, 0) > 0) return STOP;
          if (compareUlid(buf, ls, f.from, 0) < 0) {
            ls = next;
            continue;
          }
        }
        if (f.all || f.matcher(buf, ls, le)) this.out.add(buf, ls, next);
      } else {
        this.malformed++;
      }
      ls = next;
      if (++lines % every === 0 && performance.now() > deadline) return ls;
    }
    return end;
  }

  /** Scans a region to its end, pausing between slices; false once past `to` or aborted. */
  async scan(buf: Buffer, start: number, end: number, signal?: AbortSignal): Promise<boolean> {
    let pos = start;
    while (pos < end) {
      pos = this.region(buf, pos, end, performance.now() + SLICE_MS);
      if (pos === STOP) return false;
      if (pos < end) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        // A slow regex over a chunk takes many slices: a client gone meanwhile stops it here.
        if (signal?.aborted) return false;
      }
    }
    return true;
  }
}

/** A growable buffer holding a line split across chunks. */
export class Carry {
  buf = Buffer.allocUnsafe(4096);
  len = 0;
  append(src: Buffer, start: number, end: number): void {
    const n = end - start;
    if (this.len + n > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    src.copy(this.buf, this.len, start, end);
    this.len += n;
  }
}

export interface ScanOptions {
  signal?: AbortSignal;
  /** Only the ULIDs of matching records (`ULID\n` each), for counting across nodes. */
  ulidsOnly?: boolean;
  /** Called at the end with the number of lines skipped as not records. */
  onMalformed?: (n: number) => void;
}

/**
 * Streams the records of one sorted segment that match `filter`, as fresh Buffers of whole
 * lines (one per chunk read, at most about a chunk each). `low`/`high` are the segment's name
 * bounds. Closes the reader when done, on error, or when the consumer stops early.
 */
export async function* scanSegment(
  reader: ChunkReader,
  filter: ScanFilter,
  low: Buffer,
  high: Buffer,
  opts: ScanOptions = {},
): AsyncGenerator<Buffer> {
  const out = new Collector(opts.ulidsOnly === true);
  const scanner = new Scanner(filter, low, high, out);
  const carry = new Carry();
  try {
    for (;;) {
      if (opts.signal?.aborted) return;
      const chunk = await reader.next();
      if (chunk === null) {
        // A final line without a newline (a torn write, damage) is not a record. A query counts
        // it, so the segment gets repaired; compaction (skipMalformed off) gets it as it is, and
        // its check refuses the input, which is then repaired, instead of the line being dropped.
        if (carry.len > 0) {
          if (filter.skipMalformed) scanner.malformed++;
          else yield Buffer.from(carry.buf.subarray(0, carry.len));
        }
        break;
      }
      let start = 0;
      let more = true;
      if (carry.len > 0) {
        const nl = chunk.indexOf(NEWLINE);
        if (nl < 0) {
          carry.append(chunk, 0, chunk.length);
          continue;
        }
        carry.append(chunk, 0, nl + 1);
        more = await scanner.scan(carry.buf, 0, carry.len, opts.signal);
        carry.len = 0;
        start = nl + 1;
      }
      const end = more ? chunk.lastIndexOf(NEWLINE) + 1 : start;
      if (more && end > start) more = await scanner.scan(chunk, start, end, opts.signal);
      const found = out.take();
      if (found !== null) yield found;
      if (!more) return;
      if (end < chunk.length) carry.append(chunk, Math.max(end, start), chunk.length);
    }
  } finally {
    if (scanner.malformed > 0) opts.onMalformed?.(scanner.malformed);
    await reader.close();
  }
}
