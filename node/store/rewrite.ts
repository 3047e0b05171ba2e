// Rewriting a segment file that holds lines which are not records (a torn `.active` file at
// recovery, an OK Log-era `.flushed` file with short or garbage lines, reference §11.2 item 2):
// the valid records, in increasing ULID order, are copied to a new segment and everything else is
// set aside in a `.bad` file for a human. Nothing is dropped silently: every input line ends up
// either in the new segment, in the `.bad` file, or is counted as a duplicate of a kept record.
// Shared by recovery (recovery.ts) and StoreLog.repair (store-log.ts); cold path, line by line.
import { RECORD_PREFIX_LENGTH, SPACE } from '../../shared/record.ts';
import { isCanonicalUlidAt, ULID_LENGTH } from '../../shared/ulid.ts';
import type { WritableFile } from '../fs/index.ts';
import { compareUlid, forEachLine } from './lines.ts';
import { BAD_EXT } from './segment-name.ts';
import type { SegmentEntry, StoreLog } from './store-log.ts';

export type LineClass = 'good' | 'duplicate' | 'bad';

/**
 * Classifies lines one at a time against the last good record's ULID. The first increasing run
 * wins: a line below the last good record is out of order and is set aside, so the output is
 * sorted without holding the file in memory.
 */
export class LineClassifier {
  private readonly last = Buffer.alloc(ULID_LENGTH);
  private hasLast = false;
  classify(buf: Buffer, start: number, end: number, complete: boolean): LineClass {
    if (!complete || end - start < RECORD_PREFIX_LENGTH) return 'bad';
    if (!isCanonicalUlidAt(buf, start) || buf[start + ULID_LENGTH] !== SPACE) return 'bad';
    if (this.hasLast) {
      const d = compareUlid(buf, start, this.last, 0);
      if (d === 0) return 'duplicate';
      if (d < 0) return 'bad'; // out of order: the file must stay sorted
    }
    buf.copy(this.last, 0, start, start + ULID_LENGTH);
    this.hasLast = true;
    return 'good';
  }
}

/** Buffers writes into ~1 MiB batches. */
class BatchWriter {
  private parts: Buffer[] = [];
  private bytes = 0;
  size = 0;
  constructor(private readonly file: WritableFile) {}
  async add(buf: Buffer): Promise<void> {
    this.parts.push(buf);
    this.bytes += buf.length;
    this.size += buf.length;
    if (this.bytes >= 1 << 20) await this.flush();
  }
  async flush(): Promise<void> {
    if (this.bytes === 0) return;
    const parts = this.parts;
    this.parts = [];
    this.bytes = 0;
    await this.file.write(parts);
  }
}

export interface RewriteResult {
  entry: SegmentEntry | null;
  records: number;
  duplicates: number;
  /** Lines written to the `.bad` file. */
  quarantined: number;
  /** The `.bad` file, when a line was set aside. */
  badPath: string | null;
}

export interface RewriteOptions {
  /** Where set-aside lines go (default `<path>.bad`). */
  badPath?: string;
  /** Segments the new one replaces: it may take their name (see StoreLog.commit). */
  replacing?: readonly SegmentEntry[];
  /** Delete `path` once the new segment is committed (default true; repair removes through the log). */
  removeSource?: boolean;
}

/**
 * Copies the valid, strictly increasing records of `path` into a new segment (dropping repeated
 * ULIDs, setting anything else aside into the `.bad` file), commits it and, unless told
 * otherwise, deletes `path`. The new segment is fsynced and committed before the source goes, so
 * a crash in between leaves a duplicate, never a loss.
 */
export async function rewriteRecords(
  log: StoreLog,
  path: string,
  opts: RewriteOptions = {},
): Promise<RewriteResult> {
  const badPath = opts.badPath ?? `${path}${BAD_EXT}`;
  const c = new LineClassifier();
  const out = await log.createActive();
  const good = new BatchWriter(out.file);
  let bad: BatchWriter | null = null;
  let badFile: WritableFile | null = null;
  const result: RewriteResult = { entry: null, records: 0, duplicates: 0, quarantined: 0, badPath: null };
  let low: string | null = null;
  let high: string | null = null;
  try {
    await forEachLine(
      log.fs.createReadStream(path, { highWaterMark: 1 << 20 }),
      async (buf, s, e, complete) => {
        const k = c.classify(buf, s, e, complete);
        if (k === 'good') {
          result.records++;
          high = buf.toString('latin1', s, s + ULID_LENGTH);
          low ??= high;
          await good.add(Buffer.from(buf.subarray(s, e + 1)));
        } else if (k === 'duplicate') {
          result.duplicates++;
        } else {
          result.quarantined++;
          if (bad === null) {
            badFile = await log.fs.create(badPath);
            bad = new BatchWriter(badFile);
            result.badPath = badPath;
          }
          const line = Buffer.from(buf.subarray(s, complete ? e + 1 : e));
          await bad.add(complete ? line : Buffer.concat([line, Buffer.from('\n')]));
        }
      },
    );
    await good.flush();
    await out.file.sync();
    await out.file.close();
    if (bad !== null) {
      await (bad as BatchWriter).flush();
      // The source is deleted next: the set-aside lines must be on disk first.
      await (badFile as unknown as WritableFile).sync();
      await (badFile as unknown as WritableFile).close();
    }
  } catch (err) {
    await out.file.close().catch(() => {});
    await log.discard(out.path);
    if (badFile !== null) await (badFile as WritableFile).close().catch(() => {});
    throw err;
  }
  if (low === null || high === null) await log.discard(out.path);
  else
    result.entry = await log.commit(out.path, low, high, good.size, result.records, {
      replacing: opts.replacing,
    });
  if (opts.removeSource ?? true) await log.fs.remove(path);
  return result;
}
