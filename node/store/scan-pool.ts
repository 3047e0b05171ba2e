// Segment scans on worker threads. On the main thread every async file read costs tens of
// microseconds of event-loop time (libuv hand-off), which capped a plain-term scan near half of
// grep's speed; in a worker the scan reads synchronously into one cache-hot buffer, several files
// are scanned in parallel on several cores, and the main thread stays free for requests. Results
// flow back in transferred buffers (copied out here and returned for reuse) under a per-scan byte
// budget; HEAD counts happen in the workers, nothing moved.
//
// No query can hold the pool: a worker gives its queries time slices in turn (scan-worker.ts),
// new scans go to the worker with the fewest queries, and a worker stuck in a single record for
// longer than `stallMs` (only a huge record under an expensive regex can do that) is terminated:
// the scan that stalled it fails with ScanStalledError, every other scan on it is resumed on a
// fresh worker from where it stood. A scan stops as soon as its consumer returns or its signal
// aborts, even while it is producing nothing.
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { OklogError } from '../../shared/errors.ts';
import type { QueryParams } from './query-params.ts';
import type { FromWorker, ScanProgress, ScanRequest, ToWorker } from './scan-worker.ts';

/** Indexes into a worker's shared control array (an Int32Array over workerData.ctl). */
export const CTL_RUNNING = 0;
export const CTL_EPOCH = 1;

export interface PoolScanJob {
  /** The file's current path (asked again if it was renamed before the worker opened it). */
  path: () => string;
  /**
   * Resolves once a rename of the file in progress is recorded (SegmentRef.settled): until then
   * a file renamed on disk is not found under the path() it still has.
   */
  settled?: () => Promise<void>;
  params: Pick<QueryParams, 'q' | 'regex' | 'topic' | 'from' | 'to'>;
  low: string;
  high: string;
  /** Read chunk size. */
  chunk: number;
  /** Bytes a scan may run ahead of its consumer. */
  budget: number;
  /** Only the lines starting in this byte range of the file (default: all). */
  start?: number;
  end?: number;
}

export interface PoolScanOptions {
  /** Stops the scan (the iterator ends, the worker is told at once). */
  signal?: AbortSignal;
  /** The query or subscriber the scan belongs to: workers share their time among groups. */
  group?: number;
  /** Only the ULIDs of matching records (`ULID\n` each). */
  ulids?: boolean;
  /** Told the CPU milliseconds the scan used since the last call (about every 100 ms). */
  onCpu?: (ms: number) => void;
}

class ScanError extends OklogError {
  constructor(message: string, code?: string) {
    super(message, 'OKLOG_ERR_SCAN', { fsCode: code });
    this.name = 'ScanError';
    if (code) (this as unknown as { errno: string }).errno = code;
  }
}

/** A scan made no progress for too long (one record, one regex): it was stopped. */
export class ScanStalledError extends OklogError {
  constructor(limitMs: number, path: string) {
    super(
      `scan stopped: a single record took longer than ${limitMs} ms to match (narrow the pattern)`,
      'OKLOG_ERR_SCAN_STALLED',
      { limitMs, path },
    );
    this.name = 'ScanStalledError';
  }
}

interface Slot {
  index: number;
  worker: Worker;
  /** [CTL_RUNNING]: id of the scan in a slice (0: none); [CTL_EPOCH]: bumped every step. */
  ctl: Int32Array;
  scans: Map<number, PoolScan>;
  /** Resolves once the worker has loaded its modules. */
  ready: Promise<void>;
  lastEpoch: number;
  /** How long the running scan has made no step. */
  stalledMs: number;
  /**
   * The watchdog keeps looking at the worker until then even with no scans on it: a scan just
   * cancelled may still be picked up by the worker before it reads the cancel (see abandoned()).
   */
  watchUntil: number;
  dead: boolean;
}

/**
 * The worker is inside a scan the pool no longer has (cancelled, its consumer gone): the worker
 * reads the cancel only once the slice ends, which a single expensive record can put off for
 * seconds.
 */
function abandoned(slot: Slot, running: number): boolean {
  return running !== 0 && !slot.scans.has(running);
}

let groupIds = 1;
/** A fresh group id (one per query, one per stream subscriber). */
export function newScanGroup(): number {
  return groupIds++;
}

/** How many times a scan is resumed on a fresh worker after its worker was stopped. */
const MAX_RESUMES = 3;

/**
 * One logical scan of a file (or byte range). It runs as a worker-side scan (`wid`) and can be
 * resumed under a new `wid` on another worker: every line before `at` was scanned and its
 * matches delivered, so the new worker starts there and nothing is sent twice.
 */
class PoolScan implements AsyncIterableIterator<Buffer> {
  /** Matching records counted (count-only scans), final once the scan has ended. */
  count = 0;
  /** CPU milliseconds the workers spent on this scan. */
  cpuMs = 0;
  /** Lines skipped as not records. */
  malformed = 0;
  private wid = 0;
  private slot: Slot | null = null;
  private path: string;
  private at: number;
  private countBase = 0;
  private cpuBase = 0;
  private malformedBase = 0;
  private reported = 0;
  private delivered = false;
  private opens = 0;
  private resumes = 0;
  private queue: { buf: Buffer; wid: number }[] = [];
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private closed = false;
  private readonly onAbort = () => void this.return();
  /** The query or subscriber this scan belongs to (workers share their time among groups). */
  readonly groupId: number;

  constructor(
    private readonly pool: ScanPool,
    private readonly job: PoolScanJob,
    private readonly countOnly: boolean,
    private readonly opts: PoolScanOptions,
  ) {
    this.groupId = opts.group ?? 0;
    this.path = job.path();
    this.at = job.start ?? 0;
    if (opts.signal?.aborted) {
      this.closed = true;
      this.done = true;
      return;
    }
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    this.open();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private open(): void {
    const { slot, wid } = this.pool.place(this);
    this.slot = slot;
    this.wid = wid;
    this.opens++;
    const p = this.job.params;
    const req: ScanRequest = {
      t: 'scan',
      id: wid,
      group: this.groupId,
      path: this.path,
      q: p.q,
      regex: p.regex,
      topic: p.topic,
      from: p.from,
      to: p.to,
      low: this.job.low,
      high: this.job.high,
      chunk: this.job.chunk,
      budget: this.job.budget,
      start: this.at,
      end: this.job.end ?? null,
      countOnly: this.countOnly,
      ulids: this.opts.ulids === true,
    };
    slot.worker.postMessage(req);
  }

  private send(m: ToWorker): void {
    if (this.slot !== null && !this.slot.dead) this.slot.worker.postMessage(m);
  }

  private progress(m: ScanProgress): void {
    this.at = m.at;
    this.count = this.countBase + m.count;
    this.malformed = this.malformedBase + m.malformed;
    this.cpuMs = this.cpuBase + m.cpu;
    if (this.opts.onCpu !== undefined && this.cpuMs > this.reported) {
      const d = this.cpuMs - this.reported;
      this.reported = this.cpuMs;
      this.opts.onCpu(d);
    }
  }

  /** A message from the worker-side scan `wid` (stale ones, of a replaced run, are ignored). */
  deliver(wid: number, m: FromWorker): void {
    if (wid !== this.wid || this.done) return;
    if (m.t === 'data') {
      // Copy out; the pool sends the buffer back for reuse (see scan-worker.ts on why).
      const copy = Buffer.allocUnsafe(m.len);
      copy.set(new Uint8Array(m.buf, 0, m.len));
      this.delivered = true;
      this.progress(m);
      if (!this.closed) this.queue.push({ buf: copy, wid });
    } else if (m.t === 'progress') {
      this.progress(m);
      return;
    } else if (m.t === 'end') {
      this.progress(m);
      this.finish();
    } else if (m.t === 'error') {
      const renamed = m.code === 'ENOENT' && !this.delivered && this.opens < 5;
      this.forget();
      if (renamed && this.job.path() !== this.path) {
        // The compacter renamed the file between selection and open: try its new name.
        this.reopen();
        return;
      }
      if (renamed && this.job.settled !== undefined) {
        // Maybe renamed on disk and not yet in the log: its new name is known once it is.
        const err = new ScanError(m.message, m.code);
        this.job.settled().then(
          () => this.afterRename(err),
          () => this.afterRename(err),
        );
        return;
      }
      this.error = new ScanError(m.message, m.code);
      this.finish();
    }
    this.notify();
  }

  /** Opens the file again under its current name (it was renamed before the worker opened it). */
  private reopen(): void {
    this.path = this.job.path();
    this.open();
  }

  /** A rename the file was not found during is over: its new name, or `err` if it kept its name. */
  private afterRename(err: ScanError): void {
    if (this.done || this.closed) return;
    if (this.job.path() !== this.path) {
      try {
        this.reopen();
        return;
      } catch (e) {
        this.error = e as Error; // the pool was closed meanwhile
      }
    } else this.error = err;
    this.finish();
    this.notify();
  }

  /** The worker this scan ran on was stopped (`stalled`: because of this very scan) or died. */
  lost(stalled: ScanStalledError | null, died: Error | null): void {
    if (this.done) return;
    this.forget();
    if (stalled === null && died === null && this.resumes < MAX_RESUMES) {
      this.resumes++;
      this.pool.resumed++;
      this.countBase = this.count;
      this.cpuBase = this.cpuMs;
      this.malformedBase = this.malformed;
      this.open();
      return;
    }
    this.error = stalled ?? new ScanError(`scan worker: ${died?.message ?? 'stopped'}`);
    this.finish();
    this.notify();
  }

  /** The file being scanned. */
  get file(): string {
    return this.path;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private finish(): void {
    this.done = true;
    this.forget();
    this.opts.signal?.removeEventListener('abort', this.onAbort);
  }

  private forget(): void {
    this.slot?.scans.delete(this.wid);
  }

  async next(): Promise<IteratorResult<Buffer>> {
    for (;;) {
      const item = this.queue.shift();
      if (item !== undefined) {
        if (!this.done && item.wid === this.wid) this.send({ t: 'credit', id: this.wid, n: item.buf.length });
        return { value: item.buf, done: false };
      }
      if (this.error !== null) {
        const err = this.error;
        this.error = null;
        throw err;
      }
      if (this.done || this.closed) return { value: undefined, done: true };
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  /** Stops the scan now: the worker is told at once, a pending next() resolves done. */
  async return(): Promise<IteratorResult<Buffer>> {
    if (!this.closed) {
      this.closed = true;
      if (!this.done) {
        this.send({ t: 'cancel', id: this.wid });
        if (this.slot !== null) this.pool.cancelled(this.slot);
      }
      this.queue = [];
      this.finish();
      this.notify();
    }
    return { value: undefined, done: true };
  }
}

export type { PoolScan };

let workerSource: string | null = null;

/**
 * Starts scan-worker.ts. Module hooks registered on the main thread (tsx) do not reach workers,
 * and registering tsx in each worker costs it a loader thread of its own (~17 MiB of RSS per
 * worker, half a second to start). Instead the worker and what it imports are bundled once, in
 * memory, with esbuild (the compiler tsx itself runs on): about 20 ms, then each worker starts in
 * some 60 ms as plain JavaScript.
 */
function spawnWorker(ctl: SharedArrayBuffer): Worker {
  const workerData = { ctl };
  // Bundled by cli/launch.js: the worker's bundle lies beside this one.
  if (!import.meta.url.endsWith('.ts'))
    return new Worker(new URL('./scan-worker.mjs', import.meta.url), { workerData });
  if (workerSource === null) {
    const esbuild = createRequire(import.meta.url)('esbuild') as typeof import('esbuild');
    const built = esbuild.buildSync({
      entryPoints: [fileURLToPath(new URL('./scan-worker.ts', import.meta.url))],
      bundle: true,
      format: 'cjs',
      platform: 'node',
      target: 'node20',
      write: false,
      logLevel: 'silent',
    });
    workerSource = built.outputFiles[0].text;
  }
  return new Worker(workerSource, { eval: true, workerData });
}

/**
 * One scan worker per core, 1 to 4. A full scan is the scan workers' work: the main thread only
 * passes their matches on, so on two cores two workers scan about twice as fast as one.
 */
export function defaultScanWorkers(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

export interface ScanPoolOptions {
  /**
   * A worker whose running scan makes no step (one record) for this long is terminated and its
   * other scans resumed elsewhere (default 2000 ms).
   */
  stallMs?: number;
}

/** How often the watchdog looks at the workers (while any has scans). */
const WATCHDOG_MS = 50;
/**
 * A worker still inside a cancelled scan's record this long is terminated: the scan's result is
 * not wanted, so nothing is lost, and left alone the worker would burn a core on it for as long
 * as the record takes (up to stallMs, or forever once no scan is left for the watchdog to watch)
 * while new scans placed on it wait. A slice ends within 5 ms of its deadline plus one record,
 * so an ordinary cancelled scan is long gone by then.
 */
const ABANDONED_MS = 2 * WATCHDOG_MS;
/**
 * How long after a cancel the watchdog keeps watching a worker with no scans: the worker may
 * start a slice of the cancelled scan after the cancel was sent and before it reads it (a round
 * of slices runs without reading messages).
 */
const CANCEL_WATCH_MS = 1000;

export class ScanPool {
  private readonly slots: (Slot | null)[];
  private nextId = 1;
  private closed = false;
  private watchdog: NodeJS.Timeout | null = null;
  private lastWatch = 0;
  readonly stallMs: number;
  /** Workers terminated for stalling, and scans resumed elsewhere since (tests, logs). */
  stalls = 0;
  resumed = 0;
  /** Workers terminated because they were stuck in a cancelled scan (tests, logs). */
  abandonedStops = 0;

  /**
   * `size` workers (default: defaultScanWorkers, `-store.query-workers`), started on first use
   * or by prewarm. Each costs about 20 MiB.
   */
  constructor(
    private readonly logger: Logger,
    size = defaultScanWorkers(),
    opts: ScanPoolOptions = {},
  ) {
    this.slots = Array.from({ length: size }, () => null);
    this.stallMs = opts.stallMs ?? 2000;
  }

  private spawn(i: number): Slot {
    const shared = new SharedArrayBuffer(8);
    const worker = spawnWorker(shared);
    worker.unref();
    let markReady = () => {};
    const slot: Slot = {
      index: i,
      worker,
      ctl: new Int32Array(shared),
      scans: new Map(),
      ready: new Promise<void>((resolve) => {
        markReady = resolve;
      }),
      lastEpoch: 0,
      stalledMs: 0,
      watchUntil: 0,
      dead: false,
    };
    worker.on('message', (m: FromWorker) => {
      if (m.t === 'ready') return markReady();
      slot.scans.get(m.id)?.deliver(m.id, m); // copies a data buffer out first
      if (m.t === 'data' && !slot.dead)
        worker.postMessage({ t: 'recycle', buf: m.buf } satisfies ToWorker, [m.buf]);
    });
    const fail = (err: Error) => {
      markReady();
      slot.dead = true;
      if (this.slots[i] === slot) this.slots[i] = null;
      const scans = [...slot.scans.values()];
      slot.scans.clear();
      for (const s of scans) s.lost(null, err);
    };
    worker.on('error', (err) => {
      this.logger.error({ err }, 'store: scan worker failed');
      fail(err);
    });
    worker.on('exit', (code) => fail(new Error(`exited with code ${code}`)));
    this.slots[i] = slot;
    return slot;
  }

  /**
   * Starts every worker now, so the first query does not wait for module loading (about half a
   * second each); the promise resolves when they are all ready.
   */
  prewarm(): Promise<void> {
    for (let i = 0; i < this.slots.length; i++) if (this.slots[i] === null) this.spawn(i);
    return Promise.all(this.slots.map((s) => s?.ready)).then(() => {});
  }

  /**
   * The worker for a new scan of `group`: one not stalled and not stuck in a cancelled scan
   * (which the watchdog is about to stop), then the one with the fewest groups (a simple query
   * lands beside as few other queries as possible), then the fewest scans. Started on first use.
   */
  place(scan: PoolScan): { slot: Slot; wid: number } {
    const group = scan.groupId;
    if (this.closed) throw new Error('scan pool closed');
    let best = 0;
    let bestScore = Number.POSITIVE_INFINITY;
    for (let i = 0; i < this.slots.length; i++) {
      const s = this.slots[i];
      let score = 0;
      if (s !== null) {
        const groups = new Set<number>();
        for (const x of s.scans.values()) groups.add(x.groupId);
        groups.delete(group);
        const stuck = s.stalledMs >= WATCHDOG_MS * 2 || abandoned(s, Atomics.load(s.ctl, CTL_RUNNING));
        score = (stuck ? 1e6 : 0) + groups.size * 1000 + s.scans.size;
      }
      if (score < bestScore) {
        bestScore = score;
        best = i;
      }
    }
    const slot = this.slots[best] ?? this.spawn(best);
    const wid = this.nextId++;
    slot.scans.set(wid, scan);
    this.watch();
    return { slot, wid };
  }

  private watch(): void {
    if (this.watchdog !== null) return;
    this.lastWatch = performance.now();
    this.watchdog = setInterval(() => this.check(), WATCHDOG_MS);
    this.watchdog.unref();
  }

  /** A scan on `slot` was cancelled: watch the worker a while even if it has no scans left. */
  cancelled(slot: Slot): void {
    slot.watchUntil = performance.now() + CANCEL_WATCH_MS;
    this.watch();
  }

  /**
   * The watchdog: a worker whose running scan has not stepped for stallMs is stopped, and one
   * stuck in a cancelled scan for ABANDONED_MS.
   */
  private check(): void {
    const now = performance.now();
    const elapsed = now - this.lastWatch;
    this.lastWatch = now;
    let busy = false;
    for (const slot of this.slots) {
      if (slot === null) continue;
      const epoch = Atomics.load(slot.ctl, CTL_EPOCH);
      const running = Atomics.load(slot.ctl, CTL_RUNNING);
      const orphan = abandoned(slot, running);
      // A worker with no scans may still be inside a cancelled one: watched until it is out.
      if (slot.scans.size === 0 && !orphan && now >= slot.watchUntil) continue;
      busy = true;
      if (running === 0 || epoch !== slot.lastEpoch) {
        slot.lastEpoch = epoch;
        slot.stalledMs = 0;
        continue;
      }
      slot.stalledMs += elapsed;
      if (orphan && slot.stalledMs >= ABANDONED_MS) this.stop(slot, null);
      else if (slot.stalledMs >= this.stallMs) this.stop(slot, running);
    }
    if (!busy && this.watchdog !== null) {
      clearInterval(this.watchdog);
      this.watchdog = null;
    }
  }

  /**
   * Terminates a worker: the stalled scan `culprit` fails, the others resume elsewhere. Without
   * a culprit, the worker was stuck in a scan already cancelled: every scan on it resumes.
   */
  private stop(slot: Slot, culprit: number | null): void {
    slot.dead = true;
    if (this.slots[slot.index] === slot) this.slots[slot.index] = null;
    const scans = [...slot.scans.entries()];
    slot.scans.clear();
    if (culprit === null) {
      this.abandonedStops++;
      this.logger.info(
        { others: scans.length },
        'store: a worker was still matching one record of a cancelled scan: worker restarted',
      );
    } else {
      this.stalls++;
      const guilty = scans.find(([wid]) => wid === culprit)?.[1];
      this.logger.warn(
        { stallMs: this.stallMs, path: guilty?.file, others: scans.length - 1 },
        'store: a scan made no progress (one record too slow for its regex): worker restarted, scan stopped',
      );
    }
    void slot.worker.terminate();
    for (const [wid, s] of scans)
      s.lost(wid === culprit ? new ScanStalledError(this.stallMs, s.file) : null, null);
  }

  /** Starts a scan; its matching records arrive as chunks of whole lines. */
  scan(job: PoolScanJob, opts: PoolScanOptions = {}): PoolScan {
    return new PoolScan(this, job, false, opts);
  }

  /** A count-only scan: it delivers nothing; its `count` is final once next() says done. */
  countScan(job: PoolScanJob, opts: PoolScanOptions = {}): PoolScan {
    return new PoolScan(this, job, true, opts);
  }

  /** Counts the matching records of a file (or byte range) without moving them. */
  async count(job: PoolScanJob, opts: PoolScanOptions = {}): Promise<number> {
    const scan = this.countScan(job, opts);
    while (!(await scan.next()).done) {
      // a count-only scan delivers nothing: next() resolves once it has ended
    }
    return scan.count;
  }

  /** Scans running now (tests: a disconnected query leaves none behind). */
  get activeScans(): number {
    let n = 0;
    for (const s of this.slots) n += s?.scans.size ?? 0;
    return n;
  }

  get size(): number {
    return this.slots.length;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
    const slots = this.slots.splice(0);
    await Promise.all(slots.map((s) => s?.worker.terminate()));
  }
}
