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
import { rewriteRecords } from './recovery.ts';
import type { ActiveFile, SegmentEntry, StoreLog } from './store-log.ts';

const NL = 0x0a;
const nudge = new GcNudge();
const WRITE_BATCH = 1 << 20;

/** Streaming validator of a replication body: push chunks, then end(). Throws InvalidRecordsError. */
export class RecordValidator {
  records = 0;
  bytes = 0;
  duplicates = 0;
  low: string | null = null;
  private readonly prefix = Buffer.alloc(RECORD_PREFIX_LENGTH);
  private prefixLen = 0;
  private inLine = false;
  private readonly last = Buffer.alloc(ULID_LENGTH);

  get high(): string | null {
    return this.records === 0 && !this.inLine ? null : this.last.toString('latin1');
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    let pos = 0;
    while (pos < n) {
      let nl = -2; // not searched yet
      if (this.prefixLen < RECORD_PREFIX_LENGTH) {
        const take = Math.min(RECORD_PREFIX_LENGTH - this.prefixLen, n - pos);
        nl = chunk.indexOf(NL, pos);
        if (nl >= 0 && nl < pos + take) throw this.fail('is shorter than a ULID and a space');
        chunk.copy(this.prefix, this.prefixLen, pos, pos + take);
        this.prefixLen += take;
        this.inLine = true;
        pos += take;
        if (this.prefixLen < RECORD_PREFIX_LENGTH) break;
        this.checkPrefix();
      }
      // The rest of the line is payload: only its end matters.
      if (nl === -2 || (nl >= 0 && nl < pos)) nl = chunk.indexOf(NL, pos);
      if (nl < 0) break;
      pos = nl + 1;
      this.prefixLen = 0;
      this.inLine = false;
      this.records++;
    }
    this.bytes += n;
  }

  end(): void {
    if (this.inLine) throw this.fail('does not end with a newline');
  }

  private checkPrefix(): void {
    const p = this.prefix;
    if (!isCanonicalUlidAt(p, 0) || p[ULID_LENGTH] !== SPACE)
      throw this.fail('does not start with a ULID and a space');
    if (this.records > 0) {
      const d = compareUlid(p, 0, this.last, 0);
      if (d < 0) throw this.fail('is out of order (records must be sorted by ULID)');
      if (d === 0) this.duplicates++;
    } else {
      this.low = p.toString('latin1', 0, ULID_LENGTH);
    }
    p.copy(this.last, 0, 0, ULID_LENGTH);
  }

  private fail(what: string): InvalidRecordsError {
    const line = this.records + 1;
    return new InvalidRecordsError(`invalid records: line ${line} ${what}`, { line });
  }
}

export interface ReplicateResult {
  /** The new segment, or null for an empty body. */
  entry: SegmentEntry | null;
  records: number;
  bytes: number;
}

/** Stores one replicated segment from `body` (e.g. `request.raw`). */
export async function receiveSegment(log: StoreLog, body: AsyncIterable<Buffer>): Promise<ReplicateResult> {
  return log.write(async () => {
    const v = new RecordValidator();
    let active: ActiveFile | null = null;
    let batch: Buffer[] = [];
    let batchBytes = 0;
    try {
      for await (const chunk of body) {
        if (chunk.length === 0) continue;
        v.push(chunk); // throws before any byte of an invalid chunk is written
        nudge.add(chunk.length);
        active ??= await log.createActive();
        batch.push(chunk);
        batchBytes += chunk.length;
        if (batchBytes >= WRITE_BATCH) {
          await active.file.write(batch);
          batch = [];
          batchBytes = 0;
        }
      }
      v.end();
      if (active === null || v.low === null || v.high === null) return { entry: null, records: 0, bytes: 0 };
      if (batchBytes > 0) await active.file.write(batch);
      // The sender commits (and deletes its copy) once we answer: make the data durable first.
      await active.file.sync();
      await active.file.close();
    } catch (err) {
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
