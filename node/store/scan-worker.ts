// A scan worker: runs segment scans off the main thread (see scan-pool.ts). Reads are synchronous
// here (cheapest for page-cached data, and they block only this thread). Every scan is resumable
// at any line: the worker gives time slices of SLICE_MS in turn to the queries (groups) it has
// scans of, and within a query to its scans, so one query cannot hold a worker however slow its
// regex is; a scan whose consumer is behind is parked (credit-based flow control) instead of
// blocking, so a slow client never holds a worker either.
//
// The main thread watches the worker through `ctl` (shared memory): which scan is running and a
// counter bumped at every step. A step ends within one record of its deadline, so a counter that
// stops moving means one record takes a regex (or a read) too long; the pool then terminates this
// worker and resumes the other scans elsewhere from the offsets reported in 'data'/'progress'.
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { NEWLINE } from '../../shared/record.ts';
import { collectGarbage, GcNudge } from './gc-nudge.ts';
import { ulidBytes } from './lines.ts';
import { ScanFilterCache } from './query-params.ts';
import { CTL_EPOCH, CTL_RUNNING } from './scan-pool.ts';
import { Carry, Collector, Scanner, STOP } from './segment-reader.ts';

export interface ScanRequest {
  t: 'scan';
  id: number;
  /** The query (or stream subscriber) the scan belongs to: the unit of round-robin. */
  group: number;
  path: string;
  q: string;
  regex: boolean;
  topic: string | undefined;
  from: string;
  to: string;
  low: string;
  high: string;
  chunk: number;
  /** Bytes this scan may have posted and not yet had credited back. */
  budget: number;
  /** Byte range of the file whose lines this scan owns (lines starting in [start, end)). */
  start: number;
  end: number | null;
  /** Count the matching records instead of sending them (HEAD). */
  countOnly: boolean;
  /** Send only the ULIDs of the matching records (`ULID\n` each). */
  ulids: boolean;
}
export type ToWorker =
  | ScanRequest
  | { t: 'credit'; id: number; n: number }
  | { t: 'cancel'; id: number }
  /** A posted buffer coming back for reuse (the main thread copied its bytes out). */
  | { t: 'recycle'; buf: ArrayBuffer };

/** Where a scan stands: every line before file offset `at` has been scanned and its matches posted. */
export interface ScanProgress {
  id: number;
  at: number;
  /** Matching records counted so far (count-only scans). */
  count: number;
  /** CPU time spent on the scan so far, ms. */
  cpu: number;
  /** Lines skipped as not records so far. */
  malformed: number;
}
export type FromWorker =
  | ({ t: 'data'; buf: ArrayBuffer; len: number } & ScanProgress)
  | ({ t: 'progress' } & ScanProgress)
  | ({ t: 'end' } & ScanProgress)
  | { t: 'ready'; id: 0 }
  | { t: 'error'; id: number; message: string; code?: string };

interface Scan {
  id: number;
  group: Group;
  fd: number;
  /** Next file offset to read. */
  pos: number;
  /** Skipping the line in progress at the range start. */
  skipping: boolean;
  limit: number;
  chunk: number;
  /** The chunk being scanned (held only while a region of it is pending), else null. */
  view: Buffer | null;
  /** The read buffer `view` lies in (lent by borrowRead). */
  readBuf: Buffer | null;
  /** File offset of view[0]. */
  viewBase: number;
  /** Pending region of `view`: [cur, regionEnd) are whole lines not scanned yet. */
  cur: number;
  regionEnd: number;
  /** The scan ends once the pending region is done. */
  last: boolean;
  carry: Carry;
  scanner: Scanner;
  out: Collector;
  countOnly: boolean;
  count: number;
  /** File offset just past the last line scanned. */
  scanned: number;
  /** `scanned` as of the last time the collector was emptied into the batch. */
  batchAt: number;
  /** Matches not yet posted. */
  batch: Buffer | null;
  batchLen: number;
  outstanding: number;
  budget: number;
  cpu: number;
  lastReport: number;
}

interface Group {
  id: number;
  scans: Scan[];
  /** Round-robin position among the group's scans. */
  next: number;
}

const port = parentPort;
if (port === null) throw new Error('scan-worker must run in a worker thread');
const ctl = new Int32Array((workerData as { ctl: SharedArrayBuffer }).ctl);

const scans = new Map<number, Scan>();
const groups = new Map<number, Group>();
/**
 * A query sends its terms with each of its scans (one per file or byte range): its regex is
 * compiled once here, not per scan. Opening a scan runs outside any time slice.
 */
const filters = new ScanFilterCache();
let scheduled = false;

/**
 * Matches are posted in batches of about this size (or at the end of a slice): one message and
 * one downstream write per batch rather than per chunk read keeps the main thread's work small.
 */
const POST_BYTES = 256 * 1024;
/** Time a scan may run before the worker turns to the next query and its messages. */
const SLICE_MS = 5;
/** A scan that posts nothing reports where it stands this often (for resumption, CPU budgets). */
const REPORT_MS = 100;
/** After this long without scans, the worker frees its spare buffers. */
const IDLE_TRIM_MS = 2000;

/**
 * Batch buffers travel to the main thread (transferred), are copied out there and come back for
 * reuse. Allocating a fresh buffer per batch instead makes RSS balloon: they are allocated in this
 * thread's malloc arena and freed from the main thread's, which glibc does not give back readily.
 */
const spare: ArrayBuffer[] = [];
const MAX_SPARE = 8;

/**
 * Batch buffers beyond the spares (many scans at once) become garbage once they come back; this
 * thread's heap is tiny, so V8 would collect them only after some 64 MiB had piled up. A minor
 * collection every few MiB allocated frees them while they are young.
 */
const nudge = new GcNudge(8 << 20);

function batchBuffer(min: number): Buffer {
  for (let i = spare.length - 1; i >= 0; i--) {
    if (spare[i].byteLength >= min) return Buffer.from(spare.splice(i, 1)[0]);
  }
  const size = Math.max(min, 2 * POST_BYTES);
  nudge.add(size);
  return Buffer.from(new ArrayBuffer(size));
}

/**
 * Read buffers are lent to a scan only while it has a chunk pending, so a parked scan (a slow
 * client) holds none: a worker's read memory follows the scans it is running, not those it has.
 */
const readBuffers = new Map<number, Buffer[]>();
const MAX_READ_SPARE = 4;

function borrowRead(size: number): Buffer {
  const spareBuf = readBuffers.get(size)?.pop();
  if (spareBuf !== undefined) return spareBuf;
  nudge.add(size);
  return Buffer.allocUnsafe(size);
}

function giveBackRead(buf: Buffer): void {
  const list = readBuffers.get(buf.length) ?? [];
  readBuffers.set(buf.length, list);
  if (list.length < MAX_READ_SPARE) list.push(buf);
}

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port?.postMessage(msg, transfer);
}

function progress(s: Scan): ScanProgress {
  return { id: s.id, at: s.batchAt, count: s.count, cpu: s.cpu, malformed: s.scanner.malformed };
}

/** Posts the batch (transferred; it comes back through 'recycle'). */
function flush(s: Scan): void {
  if (s.batch === null || s.batchLen === 0) return;
  const ab = s.batch.buffer as ArrayBuffer;
  post({ t: 'data', buf: ab, len: s.batchLen, ...progress(s) }, [ab]);
  s.batch = null;
  s.batchLen = 0;
  s.lastReport = performance.now();
}

/** Moves what the scanner collected into the scan's batch. */
function collect(s: Scan): void {
  if (s.countOnly) {
    s.count += s.out.countAndClear();
    s.batchAt = s.scanned;
    return;
  }
  const n = s.out.size;
  if (n > 0) {
    // The batch holds the matches of the lines before batchAt: post it before adding more.
    if (s.batch !== null && s.batchLen + n > s.batch.length) flush(s);
    if (s.batch === null) {
      s.batch = batchBuffer(n);
      s.batchLen = 0;
    }
    s.batchLen += s.out.takeInto(s.batch, s.batchLen);
    s.outstanding += n;
  }
  s.batchAt = s.scanned;
  if (s.batchLen >= POST_BYTES) flush(s);
}

function dropView(s: Scan): void {
  if (s.readBuf !== null) giveBackRead(s.readBuf);
  s.readBuf = null;
  s.view = null;
}

function finish(s: Scan): void {
  if (!scans.delete(s.id)) return;
  const g = s.group;
  g.scans.splice(g.scans.indexOf(s), 1);
  if (g.scans.length === 0) groups.delete(g.id);
  if (s.batch !== null && spare.length < MAX_SPARE) spare.push(s.batch.buffer as ArrayBuffer);
  s.batch = null;
  dropView(s);
  try {
    closeSync(s.fd);
  } catch {}
  if (scans.size === 0) setTimeout(trimIfIdle, IDLE_TRIM_MS).unref();
}

function trimIfIdle(): void {
  if (scans.size > 0) return;
  spare.length = 0;
  readBuffers.clear();
  collectGarbage();
}

const pending = (s: Scan) => s.view !== null && s.cur < s.regionEnd;

/** Scans the pending region until done or `deadline`; false when the scan is over. */
function scanRegion(s: Scan, deadline: number): boolean {
  const view = s.view as Buffer;
  const r = s.scanner.region(view, s.cur, s.regionEnd, deadline);
  if (r === STOP) {
    collect(s);
    return false;
  }
  s.cur = r;
  s.scanned = s.viewBase + r;
  collect(s);
  if (r < s.regionEnd) return true; // out of time: resume here next slice
  if (s.last) return false;
  // The bytes after the last newline start the next chunk's first line.
  if (s.regionEnd < view.length) s.carry.append(view, s.regionEnd, view.length);
  dropView(s);
  return true;
}

/**
 * One step: reads the next chunk, or goes on with the chunk pending, scanning until `deadline`
 * or the end of the chunk; false when the scan is over. A scan owns the lines that START in its
 * byte range [start, limit): it skips the line in progress at `start` and finishes the line in
 * progress at `limit`, so ranges of one file scanned in parallel partition its lines.
 */
function step(s: Scan, deadline: number): boolean {
  if (pending(s)) return scanRegion(s, deadline);
  const buf = borrowRead(s.chunk);
  const base = s.pos;
  const n = readSync(s.fd, buf, 0, buf.length, base);
  if (n === 0) {
    giveBackRead(buf);
    // A final line without a newline (a torn write, damage) is not a record: counted, so the
    // query has the segment repaired (it would otherwise be dropped unseen by every compaction).
    if (s.carry.len > 0) s.scanner.malformed++;
    s.carry.len = 0;
    return false;
  }
  s.pos += n;
  const chunk = buf.subarray(0, n);
  s.view = chunk;
  s.readBuf = buf;
  s.viewBase = base;
  let i = 0;
  if (s.skipping) {
    const nl = chunk.indexOf(NEWLINE);
    if (nl < 0) {
      dropView(s);
      return true;
    }
    s.skipping = false;
    i = nl + 1;
    s.scanned = base + i;
    s.batchAt = s.scanned;
    if (base + i >= s.limit) return false;
  }
  if (s.carry.len > 0) {
    const nl = chunk.indexOf(NEWLINE);
    if (nl < 0) {
      s.carry.append(chunk, 0, n);
      dropView(s);
      return true;
    }
    s.carry.append(chunk, 0, nl + 1);
    const r = s.scanner.region(s.carry.buf, 0, s.carry.len, Number.POSITIVE_INFINITY); // one line
    s.carry.len = 0;
    i = nl + 1;
    s.scanned = base + i;
    collect(s);
    if (r === STOP || base + i >= s.limit) return false;
  }
  let end = chunk.lastIndexOf(NEWLINE) + 1;
  let last = false;
  if (end > i && base + end >= s.limit) {
    // Lines starting at or after `limit` belong to the next range.
    end = chunk.indexOf(NEWLINE, Math.max(i, s.limit - base - 1)) + 1;
    last = true;
  }
  s.cur = i;
  s.regionEnd = Math.max(i, end);
  s.last = last;
  return scanRegion(s, deadline);
}

/** A slice of scan `s`: steps until its deadline, its credit runs out, or it ends. */
function slice(s: Scan): void {
  const t0 = performance.now();
  const deadline = t0 + SLICE_MS;
  Atomics.store(ctl, CTL_RUNNING, s.id);
  try {
    let more = true;
    // A pending region is finished even without credit (at most a chunk over budget), so a
    // parked scan never holds a read buffer.
    while (more && (s.outstanding < s.budget || pending(s))) {
      more = step(s, deadline);
      Atomics.add(ctl, CTL_EPOCH, 1);
      if (performance.now() >= deadline) break;
    }
    flush(s);
    const now = performance.now();
    s.cpu += now - t0;
    if (!more) {
      finish(s);
      post({ t: 'end', ...progress(s) });
    } else if (now - s.lastReport >= REPORT_MS) {
      s.lastReport = now;
      post({ t: 'progress', ...progress(s) });
    }
  } catch (err) {
    finish(s);
    const e = err as NodeJS.ErrnoException;
    post({ t: 'error', id: s.id, message: e.message, code: e.code });
  } finally {
    Atomics.store(ctl, CTL_RUNNING, 0);
  }
}

const runnable = (s: Scan) => s.outstanding < s.budget || pending(s);

/**
 * One round: a slice for each query in turn (to its next scan that can run), then back to the
 * event loop for messages (credit, cancel, new scans), and again while anything can run. Two
 * queries on a worker get half of it each, however many scans either has.
 */
function run(): void {
  scheduled = false;
  let worked = false;
  for (const g of [...groups.values()]) {
    const k = g.scans.length;
    for (let j = 0; j < k; j++) {
      const s = g.scans[(g.next + j) % k];
      if (!runnable(s)) continue;
      g.next = (g.next + j + 1) % k;
      worked = true;
      slice(s);
      break;
    }
  }
  if (worked) schedule();
}

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  setImmediate(run);
}

function open(m: ScanRequest): void {
  const filter = filters.get(m);
  const out = new Collector(m.ulids);
  const fd = openSync(m.path, 'r');
  const group = groups.get(m.group) ?? { id: m.group, scans: [], next: 0 };
  groups.set(m.group, group);
  const s: Scan = {
    id: m.id,
    group,
    fd,
    pos: m.start > 0 ? m.start - 1 : 0,
    skipping: m.start > 0,
    limit: m.end ?? Number.POSITIVE_INFINITY,
    chunk: m.chunk,
    view: null,
    readBuf: null,
    viewBase: 0,
    cur: 0,
    regionEnd: 0,
    last: false,
    carry: new Carry(),
    scanner: new Scanner(filter, ulidBytes(m.low), ulidBytes(m.high), out),
    out,
    countOnly: m.countOnly,
    count: 0,
    scanned: m.start,
    batchAt: m.start,
    batch: null,
    batchLen: 0,
    outstanding: 0,
    budget: m.budget,
    cpu: 0,
    lastReport: performance.now(),
  };
  scans.set(m.id, s);
  group.scans.push(s);
}

port.on('message', (m: ToWorker) => {
  if (m.t === 'scan') {
    try {
      open(m);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      post({ t: 'error', id: m.id, message: e.message, code: e.code });
      return;
    }
  } else if (m.t === 'recycle') {
    if (spare.length < MAX_SPARE) spare.push(m.buf);
    return;
  } else if (m.t === 'credit') {
    const s = scans.get(m.id);
    if (s) s.outstanding -= m.n;
  } else {
    const s = scans.get(m.id);
    if (s) finish(s);
  }
  schedule();
});

post({ t: 'ready', id: 0 });
