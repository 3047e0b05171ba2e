// A scan worker: runs segment scans off the main thread (see scan-pool.ts). Reads are synchronous
// here (cheapest for page-cached data, and they block only this thread); each scan is resumable,
// so a worker interleaves its scans one chunk at a time and parks a scan whose consumer is behind
// (credit-based flow control) instead of blocking: a slow client never holds a worker.
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { NEWLINE } from '../../shared/record.ts';
import { ulidBytes } from './lines.ts';
import { compileScanFilter } from './query-params.ts';
import { Carry, Collector, Scanner, STOP } from './segment-reader.ts';

export interface ScanRequest {
  t: 'scan';
  id: number;
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
}
export type ToWorker =
  | ScanRequest
  | { t: 'credit'; id: number; n: number }
  | { t: 'cancel'; id: number }
  /** A posted buffer coming back for reuse (the main thread copied its bytes out). */
  | { t: 'recycle'; buf: ArrayBuffer };
export type FromWorker =
  | { t: 'data'; id: number; buf: ArrayBuffer; len: number }
  | { t: 'ready'; id: 0 }
  | { t: 'end'; id: number; count: number }
  | { t: 'error'; id: number; message: string; code?: string };

interface Scan {
  id: number;
  fd: number;
  pos: number;
  /** Skipping the line in progress at the range start. */
  skipping: boolean;
  limit: number;
  buf: Buffer;
  carry: Carry;
  scanner: Scanner;
  out: Collector;
  countOnly: boolean;
  count: number;
  /** Matches not yet posted. */
  batch: Buffer | null;
  batchLen: number;
  outstanding: number;
  budget: number;
}

const port = parentPort;
if (port === null) throw new Error('scan-worker must run in a worker thread');

const scans = new Map<number, Scan>();
let scheduled = false;

/**
 * Matches are posted in batches of about this size (or at the end of a slice): one message and
 * one downstream write per batch rather than per chunk read keeps the main thread's work small.
 */
const POST_BYTES = 256 * 1024;

/**
 * Batch buffers travel to the main thread (transferred), are copied out there and come back for
 * reuse. Allocating a fresh buffer per batch instead makes RSS balloon: they are allocated in this
 * thread's malloc arena and freed from the main thread's, which glibc does not give back readily.
 */
const spare: ArrayBuffer[] = [];
const MAX_SPARE = 16;

function batchBuffer(min: number): Buffer {
  for (let i = spare.length - 1; i >= 0; i--) {
    if (spare[i].byteLength >= min) return Buffer.from(spare.splice(i, 1)[0]);
  }
  return Buffer.from(new ArrayBuffer(Math.max(min, 2 * POST_BYTES)));
}

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port?.postMessage(msg, transfer);
}

/** Posts the batch (transferred; it comes back through 'recycle'). */
function flush(s: Scan): void {
  if (s.batch === null || s.batchLen === 0) return;
  const ab = s.batch.buffer as ArrayBuffer;
  post({ t: 'data', id: s.id, buf: ab, len: s.batchLen }, [ab]);
  s.batch = null;
  s.batchLen = 0;
}

/** Moves what the scanner collected from the current chunk into the scan's batch. */
function collect(s: Scan): void {
  if (s.countOnly) {
    s.count += s.out.countAndClear();
    return;
  }
  const n = s.out.size;
  if (n === 0) return;
  if (s.batch !== null && s.batchLen + n > s.batch.length) flush(s);
  if (s.batch === null) {
    s.batch = batchBuffer(n);
    s.batchLen = 0;
  }
  s.batchLen += s.out.takeInto(s.batch, s.batchLen);
  s.outstanding += n;
  if (s.batchLen >= POST_BYTES) flush(s);
}

function finish(s: Scan): void {
  scans.delete(s.id);
  if (s.batch !== null && spare.length < MAX_SPARE) spare.push(s.batch.buffer as ArrayBuffer);
  s.batch = null;
  try {
    closeSync(s.fd);
  } catch {}
}

/**
 * Reads and scans one chunk; false when the scan is over. A scan owns the lines that START in
 * its byte range [start, limit): it skips the line in progress at `start` and finishes the line
 * in progress at `limit`, so ranges of one file scanned in parallel partition its lines.
 */
function step(s: Scan): boolean {
  const base = s.pos;
  const n = readSync(s.fd, s.buf, 0, s.buf.length, base);
  if (n === 0) return false; // a final line without a newline is a torn write: not a record
  s.pos += n;
  const chunk = s.buf.subarray(0, n);
  let i = 0;
  if (s.skipping) {
    const nl = chunk.indexOf(NEWLINE);
    if (nl < 0) return true;
    s.skipping = false;
    i = nl + 1;
    if (base + i >= s.limit) return false;
  }
  let more = true;
  if (s.carry.len > 0) {
    const nl = chunk.indexOf(NEWLINE);
    if (nl < 0) {
      s.carry.append(chunk, 0, n);
      return true;
    }
    s.carry.append(chunk, 0, nl + 1);
    more = s.scanner.region(s.carry.buf, 0, s.carry.len, Number.POSITIVE_INFINITY) !== STOP;
    s.carry.len = 0;
    i = nl + 1;
  }
  let end = chunk.lastIndexOf(NEWLINE) + 1;
  let last = !more || base + i >= s.limit;
  if (!last && base + end >= s.limit) {
    // Lines starting at or after `limit` belong to the next range.
    end = chunk.indexOf(NEWLINE, Math.max(i, s.limit - base - 1)) + 1;
    last = true;
  }
  if (more && end > i) more = s.scanner.region(chunk, i, end, Number.POSITIVE_INFINITY) !== STOP;
  collect(s);
  if (last || !more) return false;
  if (end < n) s.carry.append(chunk, Math.max(end, i), n);
  return true;
}

/** Time a scan may run before the worker looks at its messages and its other scans. */
const SLICE_MS = 5;

/** A slice of every scan that has credit, then back to the event loop (messages), repeat. */
function run(): void {
  scheduled = false;
  let worked = false;
  for (const s of [...scans.values()]) {
    if (s.outstanding >= s.budget) continue;
    worked = true;
    const deadline = performance.now() + SLICE_MS;
    try {
      let more = true;
      while (more && s.outstanding < s.budget && performance.now() < deadline) more = step(s);
      flush(s);
      if (!more) {
        finish(s);
        post({ t: 'end', id: s.id, count: s.count });
      }
    } catch (err) {
      finish(s);
      const e = err as NodeJS.ErrnoException;
      post({ t: 'error', id: s.id, message: e.message, code: e.code });
    }
  }
  if (worked) schedule();
}

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  setImmediate(run);
}

port.on('message', (m: ToWorker) => {
  if (m.t === 'scan') {
    try {
      const filter = compileScanFilter({
        q: m.q,
        regex: m.regex,
        topic: m.topic,
        from: m.from,
        to: m.to,
        fromText: '',
        toText: '',
        limit: null,
      });
      const out = new Collector();
      const fd = openSync(m.path, 'r');
      scans.set(m.id, {
        id: m.id,
        fd,
        pos: m.start > 0 ? m.start - 1 : 0,
        skipping: m.start > 0,
        limit: m.end ?? Number.POSITIVE_INFINITY,
        buf: Buffer.allocUnsafe(m.chunk),
        carry: new Carry(),
        scanner: new Scanner(filter, ulidBytes(m.low), ulidBytes(m.high), out),
        out,
        countOnly: m.countOnly,
        count: 0,
        batch: null,
        batchLen: 0,
        outstanding: 0,
        budget: m.budget,
      });
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
