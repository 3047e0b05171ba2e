// The consumer's HTTP client (reference §4.1 "HTTP client", with §11.2 item 10 fixed). One
// keep-alive agent; every call has a bound, but each bound fits what the call does:
// - control calls (`/ingest/next`, `/commit`, `/failed`) are tiny: one budget for the whole call;
// - a segment read may be large: bounded by idle time (no byte for `idleMs`), not by total time;
// - a replication upload streams its body (never materialised) and is bounded by upload idle time;
//   the wait for the store's answer starts only once the whole body is sent, and is generous,
//   because the store fsyncs up to a whole aggregate before it answers. OK Log's 5 s
//   response-header timeout covered the upload too and failed batches that had been stored.
import { once } from 'node:events';
import { Agent, type IncomingMessage, request } from 'node:http';
import { RemoteError } from '../../shared/errors.ts';
import { BodyLengthError, RequestTimeoutError, SegmentTooLargeError } from './consumer-errors.ts';

export interface HttpResponse {
  status: number;
  body: Buffer;
  /**
   * Set by the in-process transport on a segment read: the same bytes can be streamed again
   * later, so the consumer need not keep `body` in memory until it replicates (local-http.ts).
   */
  reopen?: () => AsyncIterable<Buffer>;
  /** A segment read too large for memory went to the spill sink instead: its length (body is empty). */
  spilled?: number;
  /** A control call was sent a second time, on a new connection, after the first one's was reset. */
  retried?: boolean;
}

/** Where the bytes of a segment too large for memory go (a quarantine file). */
export interface SpillSink {
  write(chunk: Buffer): Promise<void>;
}

/**
 * Asked once a segment read is known to be larger than `maxBytes` (from its size, before any of
 * its bytes are read): a sink takes the whole body, chunk by chunk; null refuses it, and the read
 * fails with SegmentTooLargeError.
 */
export type SpillFn = (size: number) => Promise<SpillSink | null>;

export interface ConsumerHttpOptions {
  /** Whole-call budget of next/commit/failed (default 10 s). */
  controlTimeoutMs?: number;
  /** A segment read fails after this long without a byte, headers included (default 30 s). */
  readIdleTimeoutMs?: number;
  /** An upload fails after this long without progress (default 60 s). */
  uploadIdleTimeoutMs?: number;
  /** How long a store may take to answer once the whole body is sent (default 10 min). */
  replicateResponseTimeoutMs?: number;
}

/** What the consumer needs from HTTP; tests may inject their own. */
export interface ConsumerHttp {
  control(method: 'GET' | 'POST', url: string, signal?: AbortSignal): Promise<HttpResponse>;
  /**
   * GETs a body of at most `maxBytes`; a short or over-long body is an error. A body announced
   * as longer is not read into memory: `spill` decides whether it is streamed to a sink instead,
   * else the read fails with SegmentTooLargeError.
   */
  read(url: string, maxBytes: number, signal?: AbortSignal, spill?: SpillFn): Promise<HttpResponse>;
  /** POSTs `body` as it is produced (chunked); `onSent` gets every chunk's length as it is written. */
  upload(
    url: string,
    body: AsyncIterable<Buffer>,
    signal?: AbortSignal,
    onSent?: (bytes: number) => void,
  ): Promise<HttpResponse>;
  close(): void;
}

/** Error bodies (and control answers) are short; more than this is cut. */
const SMALL_BODY = 64 * 1024;

export class NodeConsumerHttp implements ConsumerHttp {
  private readonly agent = new Agent({ keepAlive: true, keepAliveMsecs: 30_000, maxFreeSockets: 4 });
  private readonly controlMs: number;
  private readonly readIdleMs: number;
  private readonly uploadIdleMs: number;
  private readonly answerMs: number;

  constructor(opts: ConsumerHttpOptions = {}) {
    this.controlMs = opts.controlTimeoutMs ?? 10_000;
    this.readIdleMs = opts.readIdleTimeoutMs ?? 30_000;
    this.uploadIdleMs = opts.uploadIdleTimeoutMs ?? 60_000;
    this.answerMs = opts.replicateResponseTimeoutMs ?? 600_000;
  }

  control(method: 'GET' | 'POST', url: string, signal?: AbortSignal, retried = false): Promise<HttpResponse> {
    return new Promise((resolve, reject) => {
      const req = request(url, {
        method,
        agent: this.agent,
        signal,
        // OK Log's consumer sends commit/failed with an empty text body.
        headers: method === 'POST' ? { 'Content-Type': 'text/plain', 'Content-Length': 0 } : {},
      });
      const timer = setTimeout(
        () => req.destroy(new RequestTimeoutError(url, 'answer', this.controlMs)),
        this.controlMs,
      );
      req.on('error', () => {}); // late errors after settling are expected, not fatal
      req.once('error', (err) => {
        clearTimeout(timer);
        // A kept-alive connection reset before any answer, just as we reused it: usually the peer
        // had closed it as idle and never saw the request, so it is sent once more on a fresh
        // connection (sparing a lost commit: duplicates later). Not guaranteed, though: the peer
        // may have acted on it before the reset. A repeated commit or failed then finds the claim
        // gone (404, reported with `retried` so the caller can tell), and a repeated next takes a
        // second claim while the first waits for the ingester's pending timeout; neither loses
        // or duplicates a record.
        if (!retried && req.reusedSocket && (err as NodeJS.ErrnoException).code === 'ECONNRESET')
          resolve(this.control(method, url, signal, true));
        else reject(err);
      });
      req.once('response', (res) => {
        readBody(res, SMALL_BODY, url, false).then(
          (body) => {
            clearTimeout(timer);
            resolve(
              retried
                ? { status: res.statusCode ?? 0, body, retried }
                : { status: res.statusCode ?? 0, body },
            );
          },
          (err) => {
            clearTimeout(timer);
            reject(err);
          },
        );
      });
      req.end();
    });
  }

  read(url: string, maxBytes: number, signal?: AbortSignal, spill?: SpillFn): Promise<HttpResponse> {
    return new Promise((resolve, reject) => {
      const req = request(url, { method: 'GET', agent: this.agent, signal });
      // Socket inactivity, headers and body alike: a big segment may take long, a stall may not.
      req.setTimeout(this.readIdleMs, () =>
        req.destroy(new RequestTimeoutError(url, 'data', this.readIdleMs)),
      );
      req.on('error', () => {}); // late errors after settling are expected, not fatal
      req.once('error', reject);
      req.once('response', (res) => {
        const ok = res.statusCode === 200;
        const declared = Number(res.headers['content-length'] ?? Number.NaN);
        if (ok && Number.isFinite(declared) && declared > maxBytes) {
          // Decided from the header, before a byte of the body is read into memory.
          spillBody(res, url, declared, maxBytes, spill).then(
            (n) => resolve({ status: 200, body: Buffer.alloc(0), spilled: n }),
            (err) => {
              req.destroy();
              reject(err);
            },
          );
          return;
        }
        readBody(res, ok ? maxBytes : SMALL_BODY, url, ok).then(
          (body) => resolve({ status: res.statusCode ?? 0, body }),
          (err) => {
            req.destroy();
            reject(err);
          },
        );
      });
      req.end();
    });
  }

  async upload(
    url: string,
    body: AsyncIterable<Buffer>,
    signal?: AbortSignal,
    onSent?: (bytes: number) => void,
  ): Promise<HttpResponse> {
    const req = request(url, {
      method: 'POST',
      agent: this.agent,
      signal,
      headers: { 'Content-Type': 'application/binary', 'Transfer-Encoding': 'chunked' },
    });
    // One timeout listener for both phases (each setTimeout call would add another, and the
    // first would then report a slow answer as missing upload progress).
    let phase: { what: string; ms: number } = { what: 'upload progress', ms: this.uploadIdleMs };
    req.setTimeout(this.uploadIdleMs, () => req.destroy(new RequestTimeoutError(url, phase.what, phase.ms)));
    // The store may answer before the body is complete (a 400 for an invalid body, an error):
    // that answer is the result, not the EPIPE the next write would get.
    req.on('error', () => {}); // late errors after settling are expected, not fatal
    const response = new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
    });
    let answered = false;
    response.then(
      () => {
        answered = true;
      },
      () => {},
    );
    const stopWaiting = new AbortController();
    let complete = false;
    try {
      for await (const chunk of body) {
        if (answered || req.destroyed) break;
        onSent?.(chunk.length);
        if (!req.write(chunk)) {
          // Wait for the socket to take it, or for an early answer / error (whichever first).
          const drained = once(req, 'drain', { signal: stopWaiting.signal });
          drained.catch(() => {}); // settles with AbortError once the answer won the race
          await Promise.race([drained, response]);
        }
      }
      complete = !answered && !req.destroyed;
    } catch (err) {
      // The body failed (e.g. the merge) or the request failed while we waited.
      req.destroy(err instanceof Error ? err : new Error(String(err)));
      await response.catch(() => {});
      throw err;
    } finally {
      stopWaiting.abort();
    }
    if (complete) {
      req.end();
      // From here on the store is writing and syncing: give it the generous bound.
      phase = { what: 'answer after upload', ms: this.answerMs };
      req.setTimeout(this.answerMs);
    }
    const res = await response;
    try {
      const text = await readBody(res, SMALL_BODY, url, false);
      return { status: res.statusCode ?? 0, body: text };
    } finally {
      // An answer that came before the body was complete leaves the connection unusable.
      if (!complete) req.destroy();
    }
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * Streams a body too large for memory into the sink `spill` provides (null: refused, as an error).
 * Returns the bytes written; a body that ends short of `declared` is an error.
 */
async function spillBody(
  res: IncomingMessage,
  url: string,
  declared: number,
  max: number,
  spill: SpillFn | undefined,
): Promise<number> {
  const sink = spill === undefined ? null : await spill(declared);
  if (sink === null) {
    res.destroy();
    throw new SegmentTooLargeError(url, declared, max);
  }
  let n = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    await sink.write(chunk); // backpressure: the next chunk is read once this one is written
    n += chunk.length;
  }
  if (!res.complete || n !== declared)
    throw new BodyLengthError(url, `body ended after ${n} of ${declared} bytes`);
  return n;
}

/**
 * Reads a response body. With `exact`, the body must match Content-Length (a read cut short is
 * an error, not a shorter segment) and exceeding `max` is an error; otherwise it is cut at `max`.
 */
function readBody(res: IncomingMessage, max: number, url: string, exact: boolean): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(res.headers['content-length'] ?? Number.NaN);
    if (exact && Number.isFinite(declared) && declared > max) {
      res.destroy();
      reject(new BodyLengthError(url, `body of ${declared} bytes exceeds ${max}`));
      return;
    }
    // One allocation when the length is known (segments are served with it).
    const known = Number.isFinite(declared) && declared <= max;
    const whole = known ? Buffer.allocUnsafe(declared) : null;
    const parts: Buffer[] = [];
    let n = 0;
    let done = false;
    const finish = (err: Error | null) => {
      if (done) return;
      done = true;
      if (err) {
        reject(err);
        return;
      }
      if (exact && Number.isFinite(declared) && n !== declared) {
        reject(new BodyLengthError(url, `body ended after ${n} of ${declared} bytes`));
        return;
      }
      if (whole) resolve(n === whole.length ? whole : whole.subarray(0, n));
      else resolve(parts.length === 1 ? parts[0] : Buffer.concat(parts, n));
    };
    res.on('data', (d: Buffer) => {
      if (done) return;
      if (n + d.length > max) {
        if (exact) {
          res.destroy();
          finish(new BodyLengthError(url, `body exceeds ${max} bytes`));
          return;
        }
        d = d.subarray(0, max - n);
      }
      if (whole) d.copy(whole, n);
      else parts.push(d);
      n += d.length;
      if (!exact && n >= max) {
        res.destroy();
        finish(null);
      }
    });
    res.once('end', () => finish(null));
    res.on('error', (err) => finish(err));
    res.once('close', () => {
      if (!res.complete) finish(new RemoteError(`${url}: connection closed mid-body`, { url }));
      else finish(null);
    });
  });
}
