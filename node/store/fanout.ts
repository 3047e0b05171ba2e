// The user query's scatter step (reference §4.6 "Fan-out"): the same method and raw query string
// go to every store node's `/store/_query` at once; a node that cannot be reached, answers with an
// error status or with unreadable X-Oklog-* headers counts as failed and is named, never hidden.
// Bodies are then merged by the caller. Only the wait for response HEADERS has a timeout: a node
// may legitimately scan for minutes before its first matching record.
import { Agent, type IncomingMessage, request } from 'node:http';
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { MalformedRecordError } from './errors.ts';
import { wholeLines } from './lines.ts';
import { H, parseStatsHeaders, type QueryStats } from './query-headers.ts';

export interface NodeAnswer {
  node: string;
  status: number;
  stats: QueryStats;
  /** X-Oklog-Records-Matched when the node sent it (HEAD), else null. */
  recordsMatched: number | null;
  /** Records, sorted and deduplicated (for HEAD: empty). */
  body: AsyncIterable<Buffer>;
  /** Stops the answer (destroys the response, releases segments); idempotent. */
  close(): void;
}

/**
 * This node, answered in-process: the node's own address is in the store peer list, and going
 * through HTTP to itself would copy every record through a socket twice.
 */
export interface LocalNode {
  isSelf(node: string): boolean;
  answer(node: string, method: 'GET' | 'HEAD', signal: AbortSignal): Promise<NodeAnswer>;
}

export interface FailedNode {
  node: string;
  reason: string;
  /** The status it answered with, when it answered (503: busy, retry shortly). */
  status?: number;
}

export interface FanoutResult {
  answers: NodeAnswer[];
  failed: FailedNode[];
  /** Destroys every body not consumed (idempotent). */
  close(): void;
}

export interface FanoutOptions {
  logger: Logger;
  /** How long a node may take to send response headers. */
  headerTimeoutMs?: number;
  /** The same for HEAD, where a node sends its headers only once it has counted. */
  headHeaderTimeoutMs?: number;
}

const ERROR_BODY_MAX = 512;

export class Fanout {
  private readonly agent = new Agent({ keepAlive: true, keepAliveMsecs: 30_000, maxFreeSockets: 4 });
  private readonly headerTimeoutMs: number;
  private readonly headHeaderTimeoutMs: number;
  constructor(private readonly opts: FanoutOptions) {
    this.headerTimeoutMs = opts.headerTimeoutMs ?? 10_000;
    this.headHeaderTimeoutMs = opts.headHeaderTimeoutMs ?? 300_000;
  }

  async query(
    nodes: readonly string[],
    method: 'GET' | 'HEAD',
    rawQuery: string,
    signal: AbortSignal,
    local?: LocalNode,
  ): Promise<FanoutResult> {
    const settled = await Promise.all(
      nodes.map((node) =>
        (local?.isSelf(node)
          ? local.answer(node, method, signal)
          : this.ask(node, method, rawQuery, signal)
        ).then(
          (a): NodeAnswer | FailedNode => a,
          (err): FailedNode => ({ node, reason: describeError(err), status: statusOf(err) }),
        ),
      ),
    );
    const answers: NodeAnswer[] = [];
    const failed: FailedNode[] = [];
    for (const s of settled) {
      if ('body' in s) answers.push(s);
      else {
        failed.push(s);
        this.opts.logger.warn({ node: s.node, reason: s.reason }, 'store: query node failed');
      }
    }
    return {
      answers,
      failed,
      close: () => {
        for (const a of answers) a.close();
      },
    };
  }

  private ask(
    node: string,
    method: 'GET' | 'HEAD',
    rawQuery: string,
    signal: AbortSignal,
  ): Promise<NodeAnswer> {
    return new Promise((resolve, reject) => {
      const url = new URL(`http://${node}/store/_query${rawQuery === '' ? '' : `?${rawQuery}`}`);
      const req = request(url, { method, agent: this.agent, signal });
      const timeout = method === 'HEAD' ? this.headHeaderTimeoutMs : this.headerTimeoutMs;
      const timer = setTimeout(() => {
        req.destroy(new Error(`no response headers within ${timeout} ms`));
      }, timeout);
      req.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.once('response', (res) => {
        clearTimeout(timer);
        if (res.statusCode !== 200 && res.statusCode !== 206) {
          const status = res.statusCode;
          readSome(res).then(
            (text) => reject(Object.assign(new Error(`status ${status}: ${text.trim()}`), { status })),
            () => reject(Object.assign(new Error(`status ${status}`), { status })),
          );
          return;
        }
        if (res.statusCode === 206) this.opts.logger.info({ node }, 'store: node answered 206');
        const stats = parseStatsHeaders(res.headers);
        if (stats === null) {
          res.destroy();
          reject(new Error('unparsable X-Oklog-* headers'));
          return;
        }
        const rm = res.headers[H.recordsMatched.toLowerCase()];
        const recordsMatched = typeof rm === 'string' && /^\d+$/.test(rm) ? Number(rm) : null;
        resolve({
          node,
          status: res.statusCode,
          stats,
          recordsMatched,
          body: res,
          close: () => res.destroy(),
        });
      });
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

function statusOf(err: unknown): number | undefined {
  const s = (err as { status?: unknown }).status;
  return typeof s === 'number' ? s : undefined;
}

function readSome(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    res.on('data', (d: Buffer) => {
      if (n < ERROR_BODY_MAX) parts.push(d);
      n += d.length;
      if (n >= ERROR_BODY_MAX) res.destroy();
    });
    res.once('end', () => resolve(Buffer.concat(parts).toString('utf8', 0, Math.min(n, ERROR_BODY_MAX))));
    res.once('close', () => resolve(Buffer.concat(parts).toString('utf8').slice(0, ERROR_BODY_MAX)));
    res.once('error', reject);
  });
}

/**
 * Re-chunks a peer's body into chunks of whole lines (the merge's input format). A body that
 * ends inside a line is an error: the node's answer was cut short.
 */
export function lineAligned(body: AsyncIterable<Buffer>, node: string): AsyncGenerator<Buffer> {
  return wholeLines(body, () => {
    throw new MalformedRecordError(`${node}: query answer ends inside a record`, { node });
  });
}
