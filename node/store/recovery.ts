// Opening the store log: lock, then bring the directory back to a consistent state after a crash
// (reference §4.3, with its rough edges fixed): `.active` files become segments named from their
// contents, torn or invalid lines are quarantined (never silently dropped), `.reading` files go
// back to `.flushed`, and files with unparsable names are moved aside as `.bad`, not deleted.
import { basename, dirname } from 'node:path';
import { RECORD_PREFIX_LENGTH, SPACE } from '../../shared/record.ts';
import { isCanonicalUlidAt, ULID_LENGTH } from '../../shared/ulid.ts';
import type { FileInfo, WritableFile } from '../fs/index.ts';
import { compareUlid, forEachLine } from './lines.ts';
import { ACTIVE_EXT, BAD_EXT, parseSegmentName, SEGMENT_STATES } from './segment-name.ts';
import { type SegmentEntry, StoreLog, type StoreLogOptions } from './store-log.ts';

export async function openStoreLog(opts: StoreLogOptions): Promise<StoreLog> {
  const log = new StoreLog(opts);
  await log.acquireLock();
  try {
    await recover(log);
  } catch (err) {
    await log.close();
    throw err;
  }
  return log;
}

async function recover(log: StoreLog): Promise<void> {
  const files = (await log.fs.list(log.root)).filter((f) => dirname(f.path) === log.root);
  const actives: FileInfo[] = [];
  const readings: { info: FileInfo; low: string; high: string }[] = [];
  for (const f of files) {
    if (f.name === 'LOCK' || f.name.endsWith(BAD_EXT)) continue;
    if (f.name.endsWith(ACTIVE_EXT)) {
      actives.push(f);
      continue;
    }
    const parsed = parseSegmentName(f.name);
    if (parsed === null) {
      const ext = f.name.slice(f.name.lastIndexOf('.') + 1);
      if ((SEGMENT_STATES as readonly string[]).includes(ext))
        await setAside(log, f.path, 'bad segment name');
      else log.logger.debug({ file: f.name }, 'store: ignoring unknown file');
      continue;
    }
    if (parsed.state === 'reading') readings.push({ info: f, low: parsed.low, high: parsed.high });
    else log.adopt(parsed.low, parsed.high, parsed.state, f.size, f.mtimeMs);
  }
  // A compaction was interrupted: its inputs are whole, so they go back to `.flushed` (outputs it
  // had committed duplicate them; dedupe hides that and compaction removes it). Through commit,
  // so a name another file took meanwhile is never overwritten.
  for (const r of readings) {
    const e = await log.commit(r.info.path, r.low, r.high, r.info.size);
    log.logger.info({ file: r.info.name, segment: e.base }, 'store: reset .reading segment');
  }
  for (const f of actives) await recoverActive(log, f);
}

/** Renames a file to `<name>.bad`, out of every code path's way but kept for a human. */
async function setAside(log: StoreLog, path: string, reason: string): Promise<void> {
  log.logger.warn({ file: basename(path), reason }, 'store: moving file aside');
  await log.fs.rename(path, `${path}${BAD_EXT}`);
}

interface Inspection {
  records: number;
  low: string | null;
  high: string | null;
  /** Every line is a record, in strictly increasing ULID order, and the file ends with a newline. */
  clean: boolean;
}

type LineClass = 'good' | 'duplicate' | 'bad';

/** Classifies lines one at a time against the last good record's ULID. */
class LineClassifier {
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

async function inspect(log: StoreLog, path: string): Promise<Inspection> {
  const c = new LineClassifier();
  const r: Inspection = { records: 0, low: null, high: null, clean: true };
  let lastGood: string | null = null;
  await forEachLine(log.fs.createReadStream(path, { highWaterMark: 1 << 20 }), (buf, s, e, complete) => {
    const k = c.classify(buf, s, e, complete);
    if (k !== 'good') {
      r.clean = false;
      return;
    }
    r.records++;
    lastGood = buf.toString('latin1', s, s + ULID_LENGTH);
    r.low ??= lastGood;
  });
  r.high = lastGood;
  return r;
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
  quarantined: number;
}

/**
 * Copies the valid, strictly increasing records of `path` into a new segment (dropping repeated
 * ULIDs, quarantining anything else into `<path>.bad`), commits it and deletes `path`.
 */
export async function rewriteRecords(log: StoreLog, path: string): Promise<RewriteResult> {
  const c = new LineClassifier();
  const out = await log.createActive();
  const good = new BatchWriter(out.file);
  let bad: BatchWriter | null = null;
  let badFile: WritableFile | null = null;
  const result: RewriteResult = { entry: null, records: 0, duplicates: 0, quarantined: 0 };
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
            badFile = await log.fs.create(`${path}${BAD_EXT}`);
            bad = new BatchWriter(badFile);
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
      await (badFile as unknown as WritableFile).close();
    }
  } catch (err) {
    await out.file.close().catch(() => {});
    await log.discard(out.path);
    throw err;
  }
  if (low === null || high === null) await log.discard(out.path);
  else result.entry = await log.commit(out.path, low, high, good.size, result.records);
  await log.fs.remove(path);
  return result;
}

async function recoverActive(log: StoreLog, f: FileInfo): Promise<void> {
  const r = await inspect(log, f.path);
  if (r.records === 0 && r.clean) {
    log.logger.info({ file: f.name }, 'store: removing empty .active file');
    await log.fs.remove(f.path);
    return;
  }
  if (r.clean && r.low !== null && r.high !== null) {
    const e = await log.commit(f.path, r.low, r.high, f.size, r.records);
    log.logger.info({ file: f.name, segment: e.base, records: r.records }, 'store: recovered .active file');
    return;
  }
  const res = await rewriteRecords(log, f.path);
  log.logger.warn(
    {
      file: f.name,
      segment: res.entry?.base ?? null,
      records: res.records,
      duplicates: res.duplicates,
      quarantined: res.quarantined,
    },
    'store: recovered .active file with invalid lines (quarantined in .bad)',
  );
}
