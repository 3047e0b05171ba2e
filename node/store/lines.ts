// Byte-level helpers over newline-terminated records in Buffers. Hot paths work on offsets into
// shared Buffers (no per-record strings or copies).
import { NEWLINE } from '../../shared/record.ts';
import { ULID_LENGTH } from '../../shared/ulid.ts';

/** Compares the 26-byte ULIDs at `a[ao..]` and `b[bo..]` bytewise (ULID order is byte order). */
export function compareUlid(a: Uint8Array, ao: number, b: Uint8Array, bo: number): number {
  // A JS loop beats a native Buffer.compare call here: the first differing byte is usually
  // within the first dozen, and the call overhead would dominate.
  for (let i = 0; i < ULID_LENGTH; i++) {
    const d = a[ao + i] - b[bo + i];
    if (d !== 0) return d;
  }
  return 0;
}

/** The ULID string as 26 bytes, for compareUlid against records. */
export function ulidBytes(ulid: string): Buffer {
  return Buffer.from(ulid, 'latin1');
}

/** Number of newline bytes in `buf[start..end)`. */
export function countLines(buf: Buffer, start = 0, end = buf.length): number {
  let n = 0;
  let i = buf.indexOf(NEWLINE, start);
  while (i >= 0 && i < end) {
    n++;
    i = buf.indexOf(NEWLINE, i + 1);
  }
  return n;
}

/** Offset just past the `n`th newline in `buf` (n ≥ 1), or -1 when it holds fewer lines. */
export function offsetAfterLines(buf: Buffer, n: number): number {
  let i = -1;
  for (let k = 0; k < n; k++) {
    i = buf.indexOf(NEWLINE, i + 1);
    if (i < 0) return -1;
  }
  return i + 1;
}

/** Start offset of the last line of a chunk that ends with a newline. */
export function lastLineStart(buf: Buffer, end = buf.length): number {
  if (end < 2) return 0;
  return buf.lastIndexOf(NEWLINE, end - 2) + 1;
}

/**
 * Calls `fn(buf, start, end, complete)` for every line of a chunk stream (`end` excludes the
 * newline; `complete` is false for a final line without one). Lines split across chunks are
 * joined in a scratch buffer, valid only during the call. For cold paths (recovery, repair).
 */
export async function forEachLine(
  source: AsyncIterable<Buffer>,
  fn: (buf: Buffer, start: number, end: number, complete: boolean) => void | Promise<void>,
): Promise<void> {
  let carry: Buffer[] = [];
  let carryLen = 0;
  for await (const chunk of source) {
    let pos = 0;
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, pos);
      if (nl < 0) break;
      if (carryLen > 0) {
        const line = Buffer.concat([...carry, chunk.subarray(pos, nl + 1)]);
        carry = [];
        carryLen = 0;
        await fn(line, 0, line.length - 1, true);
      } else {
        await fn(chunk, pos, nl, true);
      }
      pos = nl + 1;
    }
    if (pos < chunk.length) {
      carry.push(Buffer.from(chunk.subarray(pos)));
      carryLen += chunk.length - pos;
    }
  }
  if (carryLen > 0) {
    const line = Buffer.concat(carry);
    await fn(line, 0, line.length, false);
  }
}

/**
 * Re-chunks a byte stream into chunks of whole lines. Chunks are slices of the input where
 * possible: only a line split across two input chunks is copied. Calls `onTrailing` (which
 * should throw) when the stream ends inside a line.
 */
export async function* wholeLines(
  src: AsyncIterable<Buffer>,
  onTrailing: () => never,
): AsyncGenerator<Buffer> {
  let carry: Buffer | null = null;
  for await (const chunk of src) {
    let start = 0;
    if (carry !== null) {
      const nl = chunk.indexOf(NEWLINE);
      if (nl < 0) {
        carry = Buffer.concat([carry, chunk]);
        continue;
      }
      yield Buffer.concat([carry, chunk.subarray(0, nl + 1)]);
      carry = null;
      start = nl + 1;
    }
    const end = chunk.lastIndexOf(NEWLINE) + 1;
    if (end > start) yield chunk.subarray(start, end);
    const rest = Math.max(start, end);
    // Copied: a slice would pin the whole input chunk for a few bytes.
    if (rest < chunk.length) carry = Buffer.from(chunk.subarray(rest));
  }
  if (carry !== null) onTrailing();
}
