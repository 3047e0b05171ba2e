// The upstream side of one user stream (reference §4.9 "Fan-out"): a `GET /store/_stream`
// connection to every store node, this one included. The peer list is re-read every
// `refreshMs` (new nodes connected, departed ones cancelled); a connection that fails, ends or
// answers non-200 is retried after `retryMs`, for as long as its node is a peer. Lines arrive
// with no timeout (a quiet stream is normal). Each complete record is handed to `onRecord` as
// its own small Buffer (newline included); lines that are not records are skipped and counted.
import { Agent, type ClientRequest, type IncomingMessage, request } from 'node:http';
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { NEWLINE, RECORD_PREFIX_LENGTH, SPACE } from '../../shared/record.ts';
import { isCanonicalUlidAt, ULID_LENGTH } from '../../shared/ulid.ts';
import type { Peers } from '../cluster/peers.ts';
import { LogLimiter } from './log-limiter.ts';

export interface StreamFanoutOptions {
  peers: Peers;
  /** Query string passed through to every `_stream` (OK Log passes the raw query). */
  rawQuery: string;
  logger: Logger;
  onRecord: (line: Buffer) => void;
  /** Called once per failed or ended upstream connection. */
  onFailure?: (node: string) => void;
  refreshMs?: number;
  retryMs?: number;
  /** A record longer than this ends its connection (default 8 MiB). */
  maxLineBytes?: number;
  now?: () => number;
}

interface Upstream {
  node: string;
  req: ClientRequest | null;
  res: IncomingMessage | null;
  retry: NodeJS.Timeout | null;
  /** Bumped per attempt, so late events of an old attempt are ignored. */
  attempt: number;
  carry: Buffer[];
  carryBytes: number;
}

export class StreamFanout {
  private readonly upstreams = new Map<string, Upstream>();
  // Streams live long; no keep-alive pool to share, and no limit on sockets per host.
  private readonly agent = new Agent({ keepAlive: false });
  private readonly refreshMs: number;
  private readonly retryMs: number;
  private readonly maxLine: number;
  private readonly limiter: LogLimiter;
  private refresher: NodeJS.Timeout | null = null;
  private stopped = false;
  private paused = false;
  /** Lines skipped because they were not records. */
  malformed = 0;

  constructor(private readonly opts: StreamFanoutOptions) {
    this.refreshMs = opts.refreshMs ?? 1000;
    this.retryMs = opts.retryMs ?? 1000;
    this.maxLine = opts.maxLineBytes ?? 8 * 1024 * 1024;
    this.limiter = new LogLimiter(30_000, opts.now);
  }

  start(): void {
    this.refresh();
    this.refresher = setInterval(() => this.refresh(), this.refreshMs);
  }

  /** Nodes with a connection (or a pending retry). */
  get nodes(): string[] {
    return [...this.upstreams.keys()];
  }

  /** Stops reading from every node (the client is slow); TCP backpressure does the rest. */
  pause(): void {
    this.paused = true;
    for (const u of this.upstreams.values()) u.res?.pause();
  }

  resume(): void {
    this.paused = false;
    for (const u of this.upstreams.values()) u.res?.resume();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.refresher) clearInterval(this.refresher);
    for (const u of this.upstreams.values()) this.cancel(u);
    this.upstreams.clear();
    this.agent.destroy();
  }

  private refresh(): void {
    if (this.stopped) return;
    const want = new Set(this.opts.peers.current('store'));
    for (const [node, u] of this.upstreams) {
      if (!want.has(node)) {
        this.cancel(u);
        this.upstreams.delete(node);
      }
    }
    for (const node of want) {
      if (this.upstreams.has(node)) continue;
      const u: Upstream = { node, req: null, res: null, retry: null, attempt: 0, carry: [], carryBytes: 0 };
      this.upstreams.set(node, u);
      this.connect(u);
    }
  }

  private cancel(u: Upstream): void {
    u.attempt++;
    if (u.retry) clearTimeout(u.retry);
    u.retry = null;
    u.req?.destroy();
    u.res?.destroy();
    u.req = null;
    u.res = null;
  }

  private connect(u: Upstream): void {
    if (this.stopped) return;
    const attempt = ++u.attempt;
    u.carry = [];
    u.carryBytes = 0;
    const q = this.opts.rawQuery;
    const req = request(`http://${u.node}/store/_stream${q === '' ? '' : `?${q}`}`, {
      agent: this.agent,
    });
    u.req = req;
    const fail = (why: unknown) => {
      if (u.attempt !== attempt || this.stopped) return;
      this.failed(u, why);
    };
    req.on('error', fail);
    req.once('response', (res) => {
      if (u.attempt !== attempt) {
        res.destroy();
        return;
      }
      if (res.statusCode !== 200) {
        res.resume();
        fail(`status ${res.statusCode}`);
        return;
      }
      u.res = res;
      if (this.paused) res.pause();
      res.on('data', (chunk: Buffer) => {
        if (u.attempt === attempt) this.data(u, chunk);
      });
      res.once('end', () => fail('stream ended'));
      res.once('close', () => fail('connection closed'));
      res.on('error', fail);
    });
    req.end();
  }

  private failed(u: Upstream, why: unknown): void {
    u.attempt++; // ignore whatever the old attempt still emits
    u.req?.destroy();
    u.res?.destroy();
    u.req = null;
    u.res = null;
    this.opts.onFailure?.(u.node);
    const suppressed = this.limiter.take(u.node);
    const ctx = { node: u.node, err: typeof why === 'string' ? why : describeError(why), suppressed };
    if (suppressed === null) this.opts.logger.debug(ctx, 'store: stream upstream failed; retrying');
    else this.opts.logger.warn(ctx, 'store: stream upstream failed; retrying');
    if (u.retry) clearTimeout(u.retry);
    u.retry = setTimeout(() => {
      u.retry = null;
      if (this.upstreams.get(u.node) === u) this.connect(u);
    }, this.retryMs);
  }

  private data(u: Upstream, chunk: Buffer): void {
    let pos = 0;
    let nl = chunk.indexOf(NEWLINE);
    if (u.carryBytes > 0 && nl >= 0) {
      // The record split across chunks: join it once.
      u.carry.push(chunk.subarray(0, nl + 1));
      const line = Buffer.concat(u.carry, u.carryBytes + nl + 1);
      u.carry = [];
      u.carryBytes = 0;
      this.record(line, 0, line.length - 1, true);
      pos = nl + 1;
      nl = chunk.indexOf(NEWLINE, pos);
    }
    for (; nl >= 0; nl = chunk.indexOf(NEWLINE, pos)) {
      this.record(chunk, pos, nl, false);
      pos = nl + 1;
    }
    if (pos < chunk.length) {
      u.carry.push(Buffer.from(chunk.subarray(pos)));
      u.carryBytes += chunk.length - pos;
      if (u.carryBytes > this.maxLine) this.failed(u, `record longer than ${this.maxLine} bytes`);
    }
  }

  /** `buf[start..nl]` is a line with its newline at `nl`. */
  private record(buf: Buffer, start: number, nl: number, owned: boolean): void {
    if (
      nl - start < RECORD_PREFIX_LENGTH ||
      !isCanonicalUlidAt(buf, start) ||
      buf[start + ULID_LENGTH] !== SPACE
    ) {
      this.malformed++;
      return;
    }
    // Held for up to a window: a copy of just this record, not a view pinning the whole chunk.
    this.opts.onRecord(
      owned && start === 0 && nl === buf.length - 1 ? buf : Buffer.from(buf.subarray(start, nl + 1)),
    );
  }
}
