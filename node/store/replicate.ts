// `POST /store/replicate` (reference §4.2), validated: the body must be newline-terminated records
// `<ULID> <text>\n`, each ULID canonical, in non-decreasing order. The body streams to an `.active`
// file while a byte-level state machine checks it (memory stays bounded whatever the size); on
// the first violation the file is deleted and nothing is stored. A valid body becomes
// `LOW-HIGH.flushed`; repeated ULIDs in it are dropped (first copy wins) so that every segment on
// disk is strictly increasing.
import { RECORD_PREFIX_LENGTH, SPACE } from '../../shared/record.ts';
import { isCanonicalUlidAt, ULID_LENGTH } from '../../shared/ulid.ts';
import { InvalidRecordsError } from './errors.ts';
import { GcNudge } from './gc-nudge.ts';
import { compareUlid } from './lines.ts';
import { rewriteRecords } from './rewrite.ts';
import type { ActiveFile, SegmentEntry, StoreLog } from './store-log.ts';

const NL = 0x0a;
const nudge = new GcNudge();
const WRITE_BATCH = 1 << 20;
/**
 * Written data is flushed (fdatasync) every this many bytes while the body streams in, so the
 * final fsync before the answer has little left to do: the disk works while the body arrives
 * instead of after it, and the sender waits less for its answer.
 */
const SYNC_EVERY = 16 << 20;

/**
 * Streaming validator of a replication body: push chunks, then end(). Throws InvalidRecordsError.
 * A record prefix that lies inside one chunk (nearly all of them) is checked in place; only a
 * prefix split across chunks is assembled in `split`. The previous ULID is remembered by
 * position while it is in the current chunk and copied out once per chunk, not once per record.
 */
export class RecordValidator {
  records = 0;
  bytes = 0;
  duplicates = 0;
  low: string | null = null;
  private readonly split = Buffer.alloc(RECORD_PREFIX_LENGTH);
  private splitLen = 0;
  /** Inside a record's payload (its prefix already checked): skip to the newline. */
  private inPayload = false;
  /** The last record's ULID: `lastBuf[lastOff..]` (the current chunk, or `saved`). */
  private readonly saved = Buffer.alloc(ULID_LENGTH);
  private lastBuf: Buffer = this.saved;
  private lastOff = 0;

  get high(): string | null {
    return this.records === 0 && !this.inPayload
      ? null
      : this.lastBuf.toString('latin1', this.lastOff, this.lastOff + ULID_LENGTH);
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    let pos = 0;
    while (pos < n) {
      if (!this.inPayload) {
        if (this.splitLen === 0 && pos + RECORD_PREFIX_LENGTH <= n) {
          // Fast path: the whole prefix is in this chunk.
          const nl = chunk.indexOf(NL, pos);
          if (nl >= 0 && nl < pos + RECORD_PREFIX_LENGTH)
            throw this.fail('is shorter than a ULID and a space');
          this.checkPrefix(chunk, pos);
          pos += RECORD_PREFIX_LENGTH;
          if (nl < 0) {
            this.inPayload = true;
            break;
          }
          pos = nl + 1;
          this.records++;
          continue;
        }
        // Slow path: the prefix straddles chunks.
        const take = Math.min(RECORD_PREFIX_LENGTH - this.splitLen, n - pos);
        const nl = chunk.indexOf(NL, pos);
        if (nl >= 0 && nl < pos + take) throw this.fail('is shorter than a ULID and a space');
        chunk.copy(this.split, this.splitLen, pos, pos + take);
        this.splitLen += take;
        pos += take;
        if (this.splitLen < RECORD_PREFIX_LENGTH) {
          this.bytes += n;
          this.saveLast();
          return;
        }
        this.splitLen = 0;
        this.checkPrefix(this.split, 0);
        this.saveLast(); // `split` is reused by the next straddling prefix
        this.inPayload = true;
      }
      // The rest of the line is payload: only its end matters.
      const nl = chunk.indexOf(NL, pos);
      if (nl < 0) break;
      pos = nl + 1;
      this.inPayload = false;
      this.records++;
    }
    this.bytes += n;
    this.saveLast();
  }

  end(): void {
    if (this.inPayload || this.splitLen > 0) throw this.fail('does not end with a newline');
  }

  private checkPrefix(p: Buffer, at: number): void {
    if (!isCanonicalUlidAt(p, at) || p[at + ULID_LENGTH] !== SPACE)
      throw this.fail('does not start with a ULID and a space');
    if (this.records > 0) {
      const d = compareUlid(p, at, this.lastBuf, this.lastOff);
      if (d < 0) throw this.fail('is out of order (records must be sorted by ULID)');
      if (d === 0) this.duplicates++;
    } else {
      this.low = p.toString('latin1', at, at + ULID_LENGTH);
    }
    this.lastBuf = p;
    this.lastOff = at;
  }

  /** Copies the last ULID out of a buffer that is about to change (the next chunk may reuse it). */
  private saveLast(): void {
    if (this.lastBuf === this.saved) return;
    this.lastBuf.copy(this.saved, 0, this.lastOff, this.lastOff + ULID_LENGTH);
    this.lastBuf = this.saved;
    this.lastOff = 0;
  }

  private fail(what: string): InvalidRecordsError {
    const line = this.records + 1;
    return new InvalidRecordsError(`invalid records: line ${line} ${what}`, { line });
  }
}

/**
 * The bookkeeping of RecordValidator without its checks, for a body this process merged itself
 * from segments it validated when it gathered them (the consumer's copy to its own node): counts
 * records and notes the first and last ULIDs. Chunks must be whole lines (merge output is).
 */
export class TrustedRecords {
  records = 0;
  bytes = 0;
  readonly duplicates = 0; // the merge dropped them
  low: string | null = null;
  high: string | null = null;

  push(chunk: Buffer): void {
    if (chunk[chunk.length - 1] !== NL)
      throw new InvalidRecordsError('invalid records: a chunk of a merged body ends inside a record', {
        line: this.records + 1,
      });
    this.low ??= chunk.toString('latin1', 0, ULID_LENGTH);
    const last = chunk.length > 1 ? chunk.lastIndexOf(NL, chunk.length - 2) + 1 : 0;
    this.high = chunk.toString('latin1', last, last + ULID_LENGTH);
    for (let i = chunk.indexOf(NL); i >= 0; i = chunk.indexOf(NL, i + 1)) this.records++;
    this.bytes += chunk.length;
  }

  end(): void {}
}

export interface ReplicateResult {
  /** The new segment, or null for an empty body. */
  entry: SegmentEntry | null;
  records: number;
  bytes: number;
}

/**
 * Stores one replicated segment from `body` (e.g. `request.raw`). `trusted`: the body was merged
 * by this process from segments it validated (see TrustedRecords); anything else is checked.
 */
export async function receiveSegment(
  log: StoreLog,
  body: AsyncIterable<Buffer>,
  trusted = false,
): Promise<ReplicateResult> {
  return log.write(async () => {
    const v = trusted ? new TrustedRecords() : new RecordValidator();
    let active: ActiveFile | null = null;
    let batch: Buffer[] = [];
    let batchBytes = 0;
    // One write in flight while the next batch is read and checked (memory: two batches).
    let writing: Promise<void> = Promise.resolve();
    let unsynced = 0;
    try {
      for await (const chunk of body) {
        if (chunk.length === 0) continue;
        v.push(chunk); // throws before any byte of an invalid chunk is written
        nudge.add(chunk.length);
        active ??= await log.createActive();
        batch.push(chunk);
        batchBytes += chunk.length;
        if (batchBytes >= WRITE_BATCH) {
          await writing;
          const file = active.file;
          unsynced += batchBytes;
          const sync = unsynced >= SYNC_EVERY;
          if (sync) unsynced = 0;
          writing = file.write(batch).then(() => (sync ? file.sync() : undefined));
          writing.catch(() => {}); // observed by the next await; never an unhandled rejection
          batch = [];
          batchBytes = 0;
        }
      }
      v.end();
      await writing;
      if (active === null || v.low === null || v.high === null) return { entry: null, records: 0, bytes: 0 };
      if (batchBytes > 0) await active.file.write(batch);
      // The sender commits (and deletes its copy) once we answer: make the data durable first.
      await active.file.sync();
      await active.file.close();
    } catch (err) {
      await writing.catch(() => {});
      if (active !== null) {
        await active.file.close().catch(() => {});
        await log.discard(active.path);
      }
      throw err;
    }
    if (v.duplicates > 0) {
      const r = await rewriteRecords(log, active.path);
      return { entry: r.entry, records: r.records, bytes: v.bytes };
    }
    const entry = await log.commit(active.path, v.low, v.high, v.bytes, v.records);
    return { entry, records: v.records, bytes: v.bytes };
  });
}
