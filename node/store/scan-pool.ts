// Segment scans on worker threads. On the main thread every async file read costs tens of
// microseconds of event-loop time (libuv hand-off), which capped a plain-term scan near half of
// grep's speed; in a worker the scan reads synchronously into one cache-hot buffer, several files
// are scanned in parallel on several cores, and the main thread stays free for requests (a slow
// regex delays nobody). Results flow back in transferred buffers (copied out here and returned
// for reuse) under a per-scan byte budget; HEAD counts happen in the workers, nothing moved.
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { OklogError } from '../../shared/errors.ts';
import type { QueryParams } from './query-params.ts';
import type { FromWorker, ScanRequest, ToWorker } from './scan-worker.ts';

export interface PoolScanJob {
  /** The file's current path (asked again if it was renamed before the worker opened it). */
  path: () => string;
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

class ScanError extends OklogError {
  constructor(message: string, code?: string) {
    super(message, 'OKLOG_ERR_SCAN', { fsCode: code });
    this.name = 'ScanError';
    if (code) (this as unknown as { errno: string }).errno = code;
  }
}

interface Slot {
  worker: Worker;
  scans: Map<number, PoolScan>;
  /** Resolves once the worker has loaded its modules. */
  ready: Promise<void>;
}

class PoolScan implements AsyncIterableIterator<Buffer> {
  /** Records counted by a count-only scan, once it has ended. */
  count = 0;
  private queue: Buffer[] = [];
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private closed = false;

  constructor(
    readonly id: number,
    private readonly slot: Slot,
    private readonly send: (m: ToWorker, transfer?: ArrayBuffer[]) => void,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  deliver(m: FromWorker): void {
    if (m.t === 'data') {
      // Copy out and send the buffer back for reuse (see scan-worker.ts on why).
      const copy = Buffer.allocUnsafe(m.len);
      copy.set(new Uint8Array(m.buf, 0, m.len));
      this.send({ t: 'recycle', buf: m.buf }, [m.buf]);
      if (!this.closed) this.queue.push(copy);
    } else if (m.t === 'end') {
      this.done = true;
      this.count = m.count;
    } else if (m.t === 'error') {
      this.error = new ScanError(m.message, m.code);
      this.done = true;
    }
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async next(): Promise<IteratorResult<Buffer>> {
    for (;;) {
      const value = this.queue.shift();
      if (value !== undefined) {
        if (!this.done) this.send({ t: 'credit', id: this.id, n: value.length });
        return { value, done: false };
      }
      if (this.error !== null) {
        const err = this.error;
        this.error = null;
        this.forget();
        throw err;
      }
      if (this.done || this.closed) {
        this.forget();
        return { value: undefined, done: true };
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  async return(): Promise<IteratorResult<Buffer>> {
    if (!this.done && !this.closed) this.send({ t: 'cancel', id: this.id });
    this.closed = true;
    this.queue = [];
    this.forget();
    return { value: undefined, done: true };
  }

  private forget(): void {
    this.slot.scans.delete(this.id);
  }
}

let workerSource: string | null = null;

/**
 * Starts scan-worker.ts. Module hooks registered on the main thread (tsx) do not reach workers,
 * and registering tsx in each worker costs it a loader thread of its own (~17 MiB of RSS per
 * worker, half a second to start). Instead the worker and what it imports are bundled once, in
 * memory, with esbuild (the compiler tsx itself runs on): about 20 ms, then each worker starts in
 * some 60 ms as plain JavaScript.
 */
function spawnWorker(): Worker {
  // Bundled by cli/launch.js: the worker's bundle lies beside this one.
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./scan-worker.mjs', import.meta.url));
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
  return new Worker(workerSource, { eval: true });
}

/**
 * One scan worker per core, 1 to 4. A full scan is the scan workers' work: the main thread only
 * passes their matches on, so on two cores two workers scan about twice as fast as one.
 */
export function defaultScanWorkers(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

export class ScanPool {
  private readonly slots: (Slot | null)[];
  private nextId = 1;
  private closed = false;

  /**
   * `size` workers (default: defaultScanWorkers, `-store.query-workers`), started on first use
   * or by prewarm. Each costs about 20 MiB.
   */
  constructor(
    private readonly logger: Logger,
    size = defaultScanWorkers(),
  ) {
    this.slots = Array.from({ length: size }, () => null);
  }

  private spawn(i: number): Slot {
    const worker = spawnWorker();
    worker.unref();
    let markReady = () => {};
    const slot: Slot = {
      worker,
      scans: new Map(),
      ready: new Promise<void>((resolve) => {
        markReady = resolve;
      }),
    };
    worker.on('message', (m: FromWorker) => {
      if (m.t === 'ready') return markReady();
      const scan = slot.scans.get(m.id);
      if (scan !== undefined) scan.deliver(m);
      else if (m.t === 'data') worker.postMessage({ t: 'recycle', buf: m.buf } satisfies ToWorker, [m.buf]);
    });
    const fail = (err: Error) => {
      markReady();
      if (this.slots[i] === slot) this.slots[i] = null;
      for (const s of slot.scans.values())
        s.deliver({ t: 'error', id: s.id, message: `scan worker: ${err.message}` });
      slot.scans.clear();
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

  /** The least busy worker, started on first use. */
  private pick(): Slot {
    let best = -1;
    let load = Number.POSITIVE_INFINITY;
    for (let i = 0; i < this.slots.length; i++) {
      const n = this.slots[i]?.scans.size ?? 0;
      if (n < load) {
        load = n;
        best = i;
      }
    }
    return this.slots[best] ?? this.spawn(best);
  }

  private open(job: PoolScanJob, path: string, countOnly: boolean): PoolScan {
    if (this.closed) throw new Error('scan pool closed');
    const slot = this.pick();
    const id = this.nextId++;
    const send = (m: ToWorker, transfer: ArrayBuffer[] = []) => slot.worker.postMessage(m, transfer);
    const scan = new PoolScan(id, slot, send);
    slot.scans.set(id, scan);
    const req: ScanRequest = {
      t: 'scan',
      id,
      path,
      q: job.params.q,
      regex: job.params.regex,
      topic: job.params.topic,
      from: job.params.from,
      to: job.params.to,
      low: job.low,
      high: job.high,
      chunk: job.chunk,
      budget: job.budget,
      start: job.start ?? 0,
      end: job.end ?? null,
      countOnly,
    };
    send(req);
    return scan;
  }

  /**
   * Runs a scan to its end, yielding its chunks; the compacter may rename the file between
   * selection and open, so a scan that fails to find it is retried under its new name.
   */
  private async *run(job: PoolScanJob, countOnly: boolean, counted: { n: number }): AsyncGenerator<Buffer> {
    for (let attempt = 0; ; attempt++) {
      const path = job.path();
      const scan = this.open(job, path, countOnly);
      let got = false;
      try {
        for await (const chunk of scan) {
          got = true;
          yield chunk;
        }
        counted.n = scan.count;
        return;
      } catch (err) {
        const code = (err as { errno?: string }).errno;
        if (got || code !== 'ENOENT' || attempt >= 4 || job.path() === path) throw err;
      } finally {
        await scan.return();
      }
    }
  }

  /** Starts a scan; its matching records arrive as chunks of whole lines. */
  scan(job: PoolScanJob): AsyncIterableIterator<Buffer> {
    return this.run(job, false, { n: 0 });
  }

  /** Counts the matching records of a file (or byte range) without moving them. */
  async count(job: PoolScanJob, signal?: AbortSignal): Promise<number> {
    const counted = { n: 0 };
    for await (const _ of this.run(job, true, counted)) {
      if (signal?.aborted) break;
    }
    return counted.n;
  }

  get size(): number {
    return this.slots.length;
  }

  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots.splice(0);
    await Promise.all(slots.map((s) => s?.worker.terminate()));
  }
}
