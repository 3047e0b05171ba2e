// The consumer's in-memory aggregate (reference §4.1 `active`): the ingest segments gathered in one
// transaction, to be replicated as one store segment.
//
// OK Log merged every new segment into one growing buffer, copying the whole aggregate each time
// and panicking on a line shorter than a ULID. Here each segment is validated once, on its own,
// and kept as a sorted run (a Buffer, never strings); the k-way merge with ULID dedupe (§4.4,
// store A's `mergeSorted`, first copy wins) runs only when the aggregate is sent, streaming
// slices of the runs, so memory stays at the aggregate's size (bounded by the target size, plus
// the last segment) and nothing is merged twice. A segment that fails validation is rejected
// whole and leaves the aggregate untouched, so one bad segment never spoils a batch.
import { NEWLINE, SPACE } from '../../shared/record.ts';
import { isCanonicalUlidAt, ULID_LENGTH } from '../../shared/ulid.ts';
import { SegmentRejectedError } from './consumer-errors.ts';
import { compareUlid, wholeLines } from './lines.ts';
import { mergeSorted } from './merge.ts';

/** Shortest acceptable line without its newline: a ULID and the space after it. */
const MIN_LINE = ULID_LENGTH + 1;

/**
 * Checks that `buf` is newline-terminated records `<ULID> <text>`, canonical ULIDs, in
 * non-decreasing order (equal ULIDs are duplicates the merge drops). Returns the record count;
 * throws SegmentRejectedError naming the first bad line.
 */
export function validateRecords(buf: Buffer): number {
  let pos = 0;
  let prev = -1;
  let line = 0;
  // No closure in the loop: this runs once per record of every consumed segment.
  while (pos < buf.length) {
    line++;
    const nl = buf.indexOf(NEWLINE, pos);
    if (nl < 0) throw rejected(line, pos, 'does not end with a newline');
    if (nl - pos < MIN_LINE) throw rejected(line, pos, 'is shorter than a ULID and a space');
    if (!isCanonicalUlidAt(buf, pos) || buf[pos + ULID_LENGTH] !== SPACE)
      throw rejected(line, pos, 'does not start with a ULID and a space');
    if (prev >= 0 && compareUlid(buf, pos, buf, prev) < 0)
      throw rejected(line, pos, 'is out of order (records must be sorted by ULID)');
    prev = pos;
    pos = nl + 1;
  }
  return line;
}

function rejected(line: number, offset: number, what: string): SegmentRejectedError {
  return new SegmentRejectedError(`line ${line} (byte ${offset}) ${what}`, { line, offset });
}

async function* single(buf: Buffer): AsyncGenerator<Buffer> {
  yield buf;
}

/** A run streamed from its source, opened only when the merge first asks for it. */
async function* streamed(open: () => AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  yield* wholeLines(open(), () => {
    throw new SegmentRejectedError('segment changed since it was read: it ends inside a record');
  });
}

/** A gathered segment: its bytes, or a way to stream them again (a segment of this process). */
type Run = Buffer | (() => AsyncIterable<Buffer>);

export class Aggregate {
  private runs: Run[] = [];
  private bytesIn = 0;
  private recordsIn = 0;
  /** The smallest first ULID of the runs (a copy: the run itself may not stay in memory). */
  private first: Buffer | null = null;

  /** Bytes gathered (duplicates across segments included). */
  get bytes(): number {
    return this.bytesIn;
  }

  /** Records gathered (duplicates across segments included). */
  get records(): number {
    return this.recordsIn;
  }

  get empty(): boolean {
    return this.runs.length === 0;
  }

  /** The smallest ULID gathered: the merged segment's FROM, its placement key. */
  get firstUlid(): string | null {
    return this.first === null ? null : this.first.toString('latin1');
  }

  /**
   * Adds one ingest segment after validating it; returns its record count. On
   * SegmentRejectedError the aggregate is unchanged. The Buffer is kept as it is (not copied),
   * unless `reopen` can stream the same bytes again: then only that is kept, and the aggregate's
   * memory does not grow with the target size (an ingeststore reading its own segments).
   */
  add(segment: Buffer, reopen?: () => AsyncIterable<Buffer>): number {
    const n = validateRecords(segment);
    if (n === 0) return 0;
    this.runs.push(reopen ?? segment);
    this.bytesIn += segment.length;
    this.recordsIn += n;
    if (this.first === null || compareUlid(segment, 0, this.first, 0) < 0)
      this.first = Buffer.from(segment.subarray(0, ULID_LENGTH));
    return n;
  }

  /**
   * The merged, deduplicated records as newline-terminated chunks. Every call merges afresh from
   * the runs (deterministically, so every replica gets the same bytes); chunks are mostly slices
   * of the runs, so concurrent uploads share memory instead of copying it.
   */
  merged(): AsyncGenerator<Buffer> {
    return mergeSorted(this.runs.map((r) => (Buffer.isBuffer(r) ? single(r) : streamed(r))));
  }
}
