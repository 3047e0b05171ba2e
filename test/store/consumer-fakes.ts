// In-process fakes for consumer tests: an ingest node speaking the segment API (reference §3.5:
// next / read / commit / failed with OK Log's statuses, failed segments going back to the front
// as their old mtime makes them "oldest" again) and store nodes taking `/store/replicate`.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import pino from 'pino';
import type { PeerInfo, PeerRole, Peers } from '../../node/cluster/peers.ts';
import { line } from './helpers.ts';

export { T0, ulidAt } from './helpers.ts';

/** One record of the default topic: `<ULID> default <text>\n`. */
export function rec(ms: number, n: number, text: string): string {
  return line(ms, n, text);
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

function send(res: ServerResponse, status: number, body: string | Buffer): void {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

interface Seg {
  name: string;
  body: Buffer;
}

export class FakeIngest {
  addr = '';
  private server: Server;
  /** Flushed segments, oldest first. */
  flushed: Seg[] = [];
  claims = new Map<string, { seg: Seg; read: boolean }>();
  committed: Seg[] = [];
  failedCount = 0;
  nextCalls = 0;
  /** Make /read answer this status instead (once per entry). */
  readFailures: number[] = [];
  /** Reads after this many never answer (a stalled ingester). */
  hangReadsAfter = Number.POSITIVE_INFINITY;
  reads = 0;

  constructor(segments: (string | Buffer)[] = []) {
    for (const s of segments) this.add(s);
    this.server = createServer((req, res) => this.handle(req, res));
  }

  add(body: string | Buffer): void {
    this.flushed.push({ name: randomUUID(), body: Buffer.isBuffer(body) ? body : Buffer.from(body) });
  }

  async start(): Promise<this> {
    this.addr = await listen(this.server);
    return this;
  }

  close(): Promise<void> {
    return closeServer(this.server);
  }

  get pending(): number {
    return this.claims.size;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const id = url.searchParams.get('id') ?? '';
    req.resume();
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /ingest/next') {
      this.nextCalls++;
      const seg = this.flushed.shift();
      if (!seg) {
        send(res, 404, '404 page not found\n');
        return;
      }
      const claim = randomUUID();
      this.claims.set(claim, { seg, read: false });
      send(res, 200, claim);
      return;
    }
    const c = this.claims.get(id);
    if (route === 'GET /ingest/read') {
      if (!c) {
        send(res, 404, '404 page not found\n');
        return;
      }
      if (c.read) {
        send(res, 500, 'another client is already reading this segment\n');
        return;
      }
      c.read = true;
      if (++this.reads > this.hangReadsAfter) return;
      const fail = this.readFailures.shift();
      if (fail !== undefined) {
        send(res, fail, 'injected read failure\n');
        return;
      }
      send(res, 200, c.seg.body);
      return;
    }
    if (route === 'POST /ingest/commit') {
      if (!c) {
        send(res, 404, '404 page not found\n');
        return;
      }
      if (!c.read) {
        send(res, 428, "segment hasn't been read yet; can't commit\n");
        return;
      }
      this.claims.delete(id);
      this.committed.push(c.seg);
      send(res, 200, 'Commit OK');
      return;
    }
    if (route === 'POST /ingest/failed') {
      if (!c) {
        send(res, 404, '404 page not found\n');
        return;
      }
      this.claims.delete(id);
      this.failedCount++;
      this.flushed.unshift(c.seg); // old mtime: oldest again
      send(res, 200, 'Failed OK');
      return;
    }
    send(res, 404, '404 page not found\n');
  }
}

export interface Replica {
  body: Buffer;
  chunked: boolean;
  contentLength: string | undefined;
  /** Data events seen (a streamed body arrives in many). */
  chunks: number;
}

export class FakeStore {
  addr = '';
  private server: Server;
  received: Replica[] = [];
  /** Status to answer (after reading the whole body). */
  status = 200;
  /** Wait this long after the body before answering. */
  answerDelayMs = 0;
  /** Never answer (the consumer must be stopped or time out). */
  hang = false;
  requests = 0;

  constructor() {
    this.server = createServer((req, res) => this.handle(req, res));
  }

  async start(): Promise<this> {
    this.addr = await listen(this.server);
    return this;
  }

  close(): Promise<void> {
    return closeServer(this.server);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'POST' || req.url !== '/store/replicate') {
      req.resume();
      send(res, 404, '404 page not found\n');
      return;
    }
    this.requests++;
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      if (this.hang) return;
      const replica: Replica = {
        body: Buffer.concat(parts),
        chunked: req.headers['transfer-encoding'] === 'chunked',
        contentLength: req.headers['content-length'],
        chunks: parts.length,
      };
      setTimeout(() => {
        if (this.status === 200) this.received.push(replica);
        send(res, this.status, this.status === 200 ? 'OK\n' : 'injected failure\n');
      }, this.answerDelayMs);
    });
  }
}

/** Peers whose lists tests can change. */
export class MutablePeers implements Peers {
  constructor(
    public ingest: string[],
    public store: string[],
  ) {}
  current(role: PeerRole): string[] {
    return role === 'ingest' ? [...this.ingest] : role === 'store' ? [...this.store] : [];
  }
  members(): PeerInfo[] {
    return [];
  }
}

/** A pino logger whose lines are kept as parsed objects. */
export function captureLogger(level = 'debug') {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: pino({ level }, stream), lines };
}

/** Lines of a record body. */
export function linesOf(buf: Buffer | string): string[] {
  const s = buf.toString();
  return s === '' ? [] : s.slice(0, -1).split('\n');
}
