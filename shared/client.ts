// A small HTTP client for a node's API, used by the command-line tools (query, stream, and later
// oklogctl peers/stats). It speaks node:http directly so that response bodies are Readable streams
// with backpressure: a query result is never buffered whole, however large it is.
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { dialHost, joinHostPort, parseAddr } from './addr.ts';
import { RemoteError } from './errors.ts';

export const DEFAULT_API_PORT = 7650;

/** Bounds are Unix milliseconds (sent as RFC 3339 with millisecond precision) or ULID strings. */
export type TimeBound = number | string;

export interface QueryParams {
  from: TimeBound;
  to: TimeBound;
  q?: string;
  regex?: boolean;
  topic?: string;
  /** Maximum number of records; 0 or undefined means no limit. */
  limit?: number;
}

export interface StreamParams {
  q?: string;
  regex?: boolean;
  topic?: string;
  /** A Go duration string, e.g. `3s`. */
  window?: string;
}

/** The `X-Oklog-*` response headers of `/store/query` (reference §4.6), decoded. */
export interface QueryStats {
  from: string;
  to: string;
  q: string;
  regex: boolean;
  nodesQueried: number;
  segmentsQueried: number;
  maxDataSetSize: number;
  errorCount: number;
  /** Go duration string as the server sent it, e.g. `2.316ms`. */
  duration: string;
  /** Present on servers that count matches (`X-Oklog-Records-Matched`); null otherwise. */
  recordsMatched: number | null;
  /** Nodes that failed during the fan-out (`X-Oklog-Failed-Nodes`, comma separated). */
  failedNodes: string[];
}

export interface QueryResult {
  status: number;
  /** 206: some store nodes did not answer; the body holds what the others returned. */
  partial: boolean;
  stats: QueryStats;
  /** The response body (empty for HEAD). The caller must consume or destroy it. */
  body: IncomingMessage;
  /** The request URL (with query string). */
  url: string;
}

export interface ClientOptions {
  /** Give up if the TCP connection is not established within this many ms (default 10 s). */
  connectTimeoutMs?: number;
}

function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v.join(', ') : v;
}

function intHeader(h: IncomingHttpHeaders, name: string, url: string): number | null {
  const v = header(h, name);
  if (v === undefined || v.trim() === '') return null;
  if (!/^\s*-?\d+\s*$/.test(v)) throw new RemoteError(`${url}: invalid ${name} header ${JSON.stringify(v)}`);
  return Number(v);
}

/** Decodes the `X-Oklog-*` headers; missing counters read as 0 (old servers send fewer). */
export function decodeQueryHeaders(h: IncomingHttpHeaders, url = ''): QueryStats {
  const failed = header(h, 'X-Oklog-Failed-Nodes') ?? '';
  return {
    from: header(h, 'X-Oklog-From') ?? '',
    to: header(h, 'X-Oklog-To') ?? '',
    q: header(h, 'X-Oklog-Q') ?? '',
    regex: (header(h, 'X-Oklog-Regex') ?? '').trim().toLowerCase() === 'true',
    nodesQueried: intHeader(h, 'X-Oklog-Nodes-Queried', url) ?? 0,
    segmentsQueried: intHeader(h, 'X-Oklog-Segments-Queried', url) ?? 0,
    maxDataSetSize: intHeader(h, 'X-Oklog-Max-Data-Set-Size', url) ?? 0,
    errorCount: intHeader(h, 'X-Oklog-Error-Count', url) ?? 0,
    duration: header(h, 'X-Oklog-Duration') ?? '',
    recordsMatched: intHeader(h, 'X-Oklog-Records-Matched', url),
    failedNodes: failed
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== ''),
  };
}

/**
 * Folds in the trailers a store sends after a streamed body: the matched-record count, and nodes
 * that failed mid-body (headers were long gone by then). Returns true if new failures appeared.
 */
export function applyTrailers(stats: QueryStats, trailers: IncomingHttpHeaders, url = ''): boolean {
  const t = decodeQueryHeaders(trailers, url);
  if (header(trailers, 'X-Oklog-Records-Matched') !== undefined) stats.recordsMatched = t.recordsMatched;
  let failed = false;
  if (t.errorCount > stats.errorCount) {
    stats.errorCount = t.errorCount;
    failed = true;
  }
  for (const n of t.failedNodes) {
    if (!stats.failedNodes.includes(n)) {
      stats.failedNodes.push(n);
      failed = true;
    }
  }
  return failed;
}

function encodeBound(b: TimeBound): string {
  return typeof b === 'number' ? new Date(b).toISOString() : b;
}

/** Query string for `/store/query`: `regex`, `topic` and `limit` only when set (OK Log reads
 *  any `regex` key as true, so sending `regex=false` would be wrong against an OK Log store). */
export function queryParams(p: QueryParams): URLSearchParams {
  const s = new URLSearchParams();
  s.set('from', encodeBound(p.from));
  s.set('to', encodeBound(p.to));
  s.set('q', p.q ?? '');
  if (p.regex) s.set('regex', 'true');
  if (p.topic) s.set('topic', p.topic);
  if (p.limit && p.limit > 0) s.set('limit', String(p.limit));
  return s;
}

export function streamParams(p: StreamParams): URLSearchParams {
  const s = new URLSearchParams();
  s.set('q', p.q ?? '');
  if (p.window) s.set('window', p.window);
  if (p.regex) s.set('regex', 'true');
  if (p.topic) s.set('topic', p.topic);
  return s;
}

/** Reads at most `max` bytes of a body as text (for error messages), then discards the rest. */
async function readSome(body: Readable, max = 4096): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of body) {
      const b = chunk as Buffer;
      if (n < max) parts.push(b.subarray(0, max - n));
      n += b.length;
      if (n >= max) break;
    }
  } catch {
    // The text is only decoration for an error that is reported anyway.
  }
  body.destroy();
  return Buffer.concat(parts).toString('utf8').trim().split('\n')[0] ?? '';
}

export class OklogClient {
  /** `http://host:port`, no trailing slash. */
  readonly base: string;
  private readonly transport: typeof http | typeof https;
  private readonly connectTimeoutMs: number;

  /** `addr` is any form `parseAddr` accepts; the scheme is ignored except `https`. */
  constructor(addr: string, options: ClientOptions = {}) {
    const a = parseAddr(addr, DEFAULT_API_PORT);
    const secure = a.network === 'https';
    this.transport = secure ? https : http;
    this.base = `${secure ? 'https' : 'http'}://${joinHostPort(dialHost(a.host), a.port)}`;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  }

  /**
   * Sends a request and resolves with the response once headers arrive. A transport failure or a
   * status outside `okStatuses` rejects with a one-line `RemoteError` carrying the status.
   */
  request(
    method: string,
    path: string,
    search?: URLSearchParams,
    options: { signal?: AbortSignal; okStatuses?: (status: number) => boolean; body?: Buffer } = {},
  ): Promise<{ res: IncomingMessage; url: string }> {
    const qs = search?.toString() ?? '';
    const url = `${this.base}${path}${qs ? `?${qs}` : ''}`;
    // Error messages name the endpoint without the query string, as OK Log does.
    const what = `${method} ${this.base}${path}`;
    const ok = options.okStatuses ?? ((s: number) => s >= 200 && s < 300);
    return new Promise((resolve, reject) => {
      const req = this.transport.request(url, { method, signal: options.signal });
      let timer: NodeJS.Timeout | undefined;
      req.on('socket', (sock) => {
        if (!sock.connecting) return;
        timer = setTimeout(() => {
          req.destroy(new Error(`connect timeout after ${this.connectTimeoutMs}ms`));
        }, this.connectTimeoutMs);
        sock.once('connect', () => clearTimeout(timer));
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const reason = err.code === 'ECONNREFUSED' ? `connection refused (${err.message})` : err.message;
        reject(new RemoteError(`${what}: ${reason}`, { url, code: err.code }, { cause: err }));
      });
      req.on('response', (res) => {
        clearTimeout(timer);
        const status = res.statusCode ?? 0;
        if (ok(status)) {
          resolve({ res, url });
          return;
        }
        readSome(res).then((text) => {
          const msg = `${what}: ${status} ${res.statusMessage ?? ''}`.trimEnd();
          reject(new RemoteError(text ? `${msg}: ${text}` : msg, { status, url }));
        }, reject);
      });
      req.end(options.body);
    });
  }

  /** `GET` (records) or `HEAD` (stats only) `/store/query`. 200 and 206 resolve; 206 is `partial`. */
  async query(
    params: QueryParams,
    options: { statsOnly?: boolean; signal?: AbortSignal } = {},
  ): Promise<QueryResult> {
    const method = options.statsOnly ? 'HEAD' : 'GET';
    const { res, url } = await this.request(method, '/store/query', queryParams(params), {
      signal: options.signal,
      okStatuses: (s) => s === 200 || s === 206,
    });
    let stats: QueryStats;
    try {
      stats = decodeQueryHeaders(res.headers, `${method} ${this.base}/store/query`);
    } catch (err) {
      res.destroy();
      throw err;
    }
    const status = res.statusCode ?? 0;
    return { status, partial: status === 206, stats, body: res, url };
  }

  /** `GET /store/stream`: a live, newline-delimited body that ends only when the server closes. */
  async stream(
    params: StreamParams,
    options: { signal?: AbortSignal } = {},
  ): Promise<{ body: IncomingMessage; url: string }> {
    const { res, url } = await this.request('GET', '/store/stream', streamParams(params), {
      signal: options.signal,
    });
    return { body: res, url };
  }

  /** GET a small JSON document (peers, stats). Bodies over `maxBytes` are refused. */
  async getJson<T>(path: string, search?: URLSearchParams, maxBytes = 16 << 20): Promise<T> {
    const { res, url } = await this.request('GET', path, search);
    const parts: Buffer[] = [];
    let n = 0;
    for await (const chunk of res) {
      n += (chunk as Buffer).length;
      if (n > maxBytes) {
        res.destroy();
        throw new RemoteError(`GET ${url}: response larger than ${maxBytes} bytes`);
      }
      parts.push(chunk as Buffer);
    }
    try {
      return JSON.parse(Buffer.concat(parts).toString('utf8')) as T;
    } catch (err) {
      throw new RemoteError(`GET ${url}: invalid JSON`, { url }, { cause: err });
    }
  }
}
