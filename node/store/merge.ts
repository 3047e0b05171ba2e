// K-way merge of sorted record streams with dedupe by ULID (reference §4.4), streaming: inputs and
// output are chunks of whole newline-terminated lines, and only the chunks at the inputs' heads
// (plus one output batch) are held in memory. Used by per-node queries (overlapping segments),
// by the fan-out (one input per node) and by compaction.
import { NEWLINE } from '../../shared/record.ts';
import { ULID_LENGTH } from '../../shared/ulid.ts';
import { MalformedRecordError } from './errors.ts';
import { compareUlid } from './lines.ts';
import { MinHeap } from './min-heap.ts';

export type ChunkSource = AsyncIterable<Buffer> | AsyncIterator<Buffer>;

export interface MergeOptions {
  /**
   * Called when input `index` fails (its iterator throws, or it yields a malformed chunk); that
   * input is dropped and the merge goes on with the others (the fan-out reports the node as
   * failed). Without it the error ends the merge.
   */
  onInputError?: (index: number, err: unknown) => void;
  /** Output chunks are batched up to about this many bytes (fewer, larger writes downstream). */
  outputChunkBytes?: number;
  /**
   * Shortest line accepted (default: a ULID and a space). A ULID alone (26) for the ULID-only
   * answers a fan-out HEAD counts; whole records pass that check too.
   */
  minLineBytes?: number;
}

/** Shortest line the merge accepts: a ULID and the space after it. */
const MIN_LINE = ULID_LENGTH + 1;
const EMPTY = Buffer.alloc(0);

class Cursor {
  buf: Buffer = EMPTY;
  /** Start of the current line. */
  pos = 0;
  /** Offset of the current line's newline. */
  end = -1;
  constructor(
    readonly it: AsyncIterator<Buffer>,
    readonly index: number,
  ) {}
}

/** Orders cursors by the ULID of their current line; ties go to the lower input index. */
function less(a: Cursor, b: Cursor): boolean {
  const d = compareUlid(a.buf, a.pos, b.buf, b.pos);
  return d < 0 || (d === 0 && a.index < b.index);
}

function toIterator(src: ChunkSource): AsyncIterator<Buffer> {
  const it = src as AsyncIterable<Buffer>;
  return typeof it[Symbol.asyncIterator] === 'function'
    ? it[Symbol.asyncIterator]()
    : (src as AsyncIterator<Buffer>);
}

function malformed(index: number, what: string): MalformedRecordError {
  return new MalformedRecordError(`merge input ${index}: ${what}`, { input: index });
}

/** Loads the cursor's next non-empty chunk; false at the end of its input. */
async function load(c: Cursor, minLine: number): Promise<boolean> {
  for (;;) {
    const r = await c.it.next();
    if (r.done) return false;
    const buf = r.value;
    if (buf.length === 0) continue;
    if (buf[buf.length - 1] !== NEWLINE) throw malformed(c.index, 'chunk does not end with a newline');
    const e = buf.indexOf(NEWLINE);
    if (e < minLine) throw malformed(c.index, 'line shorter than a ULID and a space');
    c.buf = buf;
    c.pos = 0;
    c.end = e;
    return true;
  }
}

/**
 * Merges inputs that are each sorted by ULID into one sorted stream, dropping every record whose
 * ULID equals the one written just before it (so the first input's copy survives). Runs of lines
 * from one input are emitted as slices of its chunk, without copying line by line.
 */
export async function* mergeSorted(inputs: ChunkSource[], opts: MergeOptions = {}): AsyncGenerator<Buffer> {
  const chunkBytes = opts.outputChunkBytes ?? 256 * 1024;
  const minLine = opts.minLineBytes ?? MIN_LINE;
  const cursors = inputs.map((src, i) => new Cursor(toIterator(src), i));
  const live = new Set(cursors);
  const heap = new MinHeap<Cursor>(less);
  let out: Buffer[] = [];
  let outBytes = 0;
  // The last record written, by reference into its (never reused) chunk.
  let lastBuf: Buffer | null = null;
  let lastOff = 0;

  const drop = async (c: Cursor, err: unknown): Promise<void> => {
    live.delete(c);
    if (!opts.onInputError) throw err;
    opts.onInputError(c.index, err);
    await Promise.resolve(c.it.return?.()).catch(() => {});
  };
  const fill = async (c: Cursor): Promise<boolean> => {
    try {
      if (await load(c, minLine)) return true;
      live.delete(c);
      return false;
    } catch (err) {
      await drop(c, err);
      return false;
    }
  };
  const emit = (buf: Buffer, start: number, end: number) => {
    if (end <= start) return;
    out.push(buf.subarray(start, end));
    outBytes += end - start;
  };

  try {
    // Inputs are independent producers (files, peers): wait for their first chunks together.
    const loaded = await Promise.all(cursors.map(fill));
    cursors.forEach((c, i) => {
      if (loaded[i]) heap.push(c);
    });
    while (heap.size > 0) {
      const c = heap.pop()!;
      const other = heap.peek();
      let runStart = c.pos;
      let exhausted = false;
      let bad: MalformedRecordError | null = null;
      // Emit lines of `c` while they stay below every other input's head.
      for (;;) {
        if (lastBuf !== null && compareUlid(c.buf, c.pos, lastBuf, lastOff) === 0) {
          emit(c.buf, runStart, c.pos);
          runStart = c.end + 1;
        } else {
          lastBuf = c.buf;
          lastOff = c.pos;
        }
        c.pos = c.end + 1;
        if (c.pos >= c.buf.length) {
          exhausted = true;
          break;
        }
        const e = c.buf.indexOf(NEWLINE, c.pos);
        if (e - c.pos < minLine) {
          bad = malformed(c.index, 'line shorter than a ULID and a space');
          break;
        }
        c.end = e;
        if (other !== undefined && !less(c, other)) break;
      }
      emit(c.buf, runStart, c.pos);
      if (bad) await drop(c, bad);
      else if (!exhausted) heap.push(c);
      else if (await fill(c)) heap.push(c);
      if (outBytes >= chunkBytes) {
        const chunk = out.length === 1 ? out[0] : Buffer.concat(out, outBytes);
        out = [];
        outBytes = 0;
        yield chunk;
      }
    }
    if (outBytes > 0) yield out.length === 1 ? out[0] : Buffer.concat(out, outBytes);
  } finally {
    // Stop every input still open (files, HTTP bodies) when the consumer stops early or fails.
    await Promise.all([...live].map((c) => Promise.resolve(c.it.return?.()).catch(() => {})));
  }
}
