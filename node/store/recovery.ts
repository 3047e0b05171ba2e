// Opening the store log: lock, then bring the directory back to a consistent state after a crash
// (reference §4.3, with its rough edges fixed): `.active` files become segments named from their
// contents, torn or invalid lines are quarantined (never silently dropped), `.reading` files go
// back to `.flushed`, files with unparsable names are moved aside as `.bad`, not deleted, and a
// name with its bounds reversed (`HIGH-LOW`, which OK Log could write) is renamed `LOW-HIGH`.
import { basename, dirname } from 'node:path';
import { ULID_LENGTH } from '../../shared/ulid.ts';
import type { FileInfo } from '../fs/index.ts';
import { forEachLine } from './lines.ts';
import { LineClassifier, rewriteRecords } from './rewrite.ts';
import {
  ACTIVE_EXT,
  BAD_EXT,
  DOOMED_EXT,
  parseSegmentName,
  SEGMENT_STATES,
  type SegmentState,
  segmentFileName,
} from './segment-name.ts';
import { StoreLog, type StoreLogOptions } from './store-log.ts';

export { type RewriteResult, rewriteRecords } from './rewrite.ts';

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

interface Named {
  info: FileInfo;
  low: string;
  high: string;
  state: SegmentState;
}

async function recover(log: StoreLog): Promise<void> {
  const files = (await log.fs.list(log.root)).filter((f) => dirname(f.path) === log.root);
  const actives: FileInfo[] = [];
  const readings: Named[] = [];
  const reversed: Named[] = [];
  for (const f of files) {
    if (f.name === 'LOCK' || f.name.endsWith(BAD_EXT)) continue;
    if (f.name.endsWith(ACTIVE_EXT)) {
      actives.push(f);
      continue;
    }
    if (f.name.endsWith(DOOMED_EXT)) {
      // Removed from the log while a query still read it, then the process died: its records are
      // in the segments that replaced it (or it was purged).
      log.logger.info({ file: f.name }, 'store: deleting leftover removed segment');
      await log.fs.remove(f.path);
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
    const named: Named = { info: f, ...parsed };
    if (parsed.state === 'reading') readings.push(named);
    // parseSegmentName swaps reversed bounds; the file is still under its reversed name.
    else if (f.name !== segmentFileName(parsed.low, parsed.high, parsed.state)) reversed.push(named);
    else log.adopt(parsed.low, parsed.high, parsed.state, f.size, f.mtimeMs);
  }
  // After every well-named file is in the index, so that these renames can never land on a name
  // some file on disk already has (the log nudges the name instead).
  // A compaction was interrupted: its inputs are whole, so they go back to `.flushed` (outputs it
  // had committed duplicate them; dedupe hides that and compaction removes it). Through commit,
  // so a name another file took meanwhile is never overwritten.
  for (const r of readings) {
    const e = await log.commit(r.info.path, r.low, r.high, r.info.size);
    log.logger.info({ file: r.info.name, segment: e.base }, 'store: reset .reading segment');
  }
  // `HIGH-LOW.<state>`: the index and every later rename use `LOW-HIGH`, so the file takes that
  // name now (a trashed one keeps its trash time: a rename leaves the mtime alone).
  for (const r of reversed) {
    const e = await log.place(r.info.path, r.low, r.high, r.state, r.info.size, r.info.mtimeMs);
    log.logger.warn(
      { file: r.info.name, segment: e.file },
      'store: renamed segment whose name had its bounds reversed',
    );
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
  log.metrics?.badLines.inc(res.quarantined);
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
