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

/** What validation learnt of a segment: enough to tell whether runs need merging at all. */
export interface RunFacts {
  records: number;
  /** Offset of the last record (-1 when empty). */
  lastOffset: number;
  /** Two adjacent records share a ULID (the merge must drop one). */
  duplicates: boolean;
}

/**
 * Checks that `buf` is newline-terminated records `<ULID> <text>`, canonical ULIDs, in
 * non-decreasing order (equal ULIDs are duplicates the merge drops). Returns the record count;
 * throws SegmentRejectedError naming the first bad line.
 */
export function validateRecords(buf: Buffer): number {
  return inspectRecords(buf).records;
}

/** validateRecords, also returning the facts the aggregate uses to skip a needless merge. */
export function inspectRecords(buf: Buffer): RunFacts {
  let pos = 0;
  let prev = -1;
  let line = 0;
  let duplicates = false;
  // No closure in the loop: this runs once per record of every consumed segment.
  while (pos < buf.length) {
    line++;
    const nl = buf.indexOf(NEWLINE, pos);
    if (nl < 0) throw rejected(line, pos, 'does not end with a newline');
    if (nl - pos < MIN_LINE) throw rejected(line, pos, 'is shorter than a ULID and a space');
    if (!isCanonicalUlidAt(buf, pos) || buf[pos + ULID_LENGTH] !== SPACE)
      throw rejected(line, pos, 'does not start with a ULID and a space');
    if (prev >= 0) {
      const d = compareUlid(buf, pos, buf, prev);
      if (d < 0) throw rejected(line, pos, 'is out of order (records must be sorted by ULID)');
      if (d === 0) duplicates = true;
    }
    prev = pos;
    pos = nl + 1;
  }
  return { records: line, lastOffset: prev, duplicates };
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
interface Run {
  source: Buffer | (() => AsyncIterable<Buffer>);
  /** Copies of its first and last ULIDs. */
  first: Buffer;
  last: Buffer;
  duplicates: boolean;
}

function chunksOf(run: Run): AsyncGenerator<Buffer> {
  return Buffer.isBuffer(run.source) ? single(run.source) : streamed(run.source);
}

/** The runs one after the other: when, in first-ULID order, each ends before the next begins. */
async function* concatenated(runs: readonly Run[]): AsyncGenerator<Buffer> {
  for (const r of runs) yield* chunksOf(r);
}

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
    const facts = inspectRecords(segment);
    const n = facts.records;
    if (n === 0) return 0;
    const first = Buffer.from(segment.subarray(0, ULID_LENGTH));
    const last = Buffer.from(segment.subarray(facts.lastOffset, facts.lastOffset + ULID_LENGTH));
    this.runs.push({ source: reopen ?? segment, first, last, duplicates: facts.duplicates });
    this.bytesIn += segment.length;
    this.recordsIn += n;
    if (this.first === null || compareUlid(first, 0, this.first, 0) < 0) this.first = first;
    return n;
  }

  /**
   * The merged, deduplicated records as newline-terminated chunks. Every call merges afresh from
   * the runs (deterministically, so every replica gets the same bytes); chunks are mostly slices
   * of the runs, so concurrent uploads share memory instead of copying it.
   */
  merged(): AsyncGenerator<Buffer> {
    // Segments of one connection follow each other: in order, they need no merge, only joining.
    const ordered = [...this.runs].sort((a, b) => compareUlid(a.first, 0, b.first, 0));
    const disjoint = ordered.every(
      (r, i) => !r.duplicates && (i === 0 || compareUlid(ordered[i - 1].last, 0, r.first, 0) < 0),
    );
    if (disjoint) return concatenated(ordered);
    return mergeSorted(this.runs.map(chunksOf));
  }
}
