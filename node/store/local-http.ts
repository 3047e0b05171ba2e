// In-process shortcut for the consumer's transport. A consumer talks to ingesters and store nodes
// over HTTP (http-client.ts); when the ingester or the store node is this very process (an
// ingeststore, or a store node that is one of its own replicas) the same calls go straight to the
// ingest log and to the replicate handler instead of through a loopback socket. Every record then
// crosses the kernel and an HTTP parser twice less, a segment is read with one call, and the
// answers are exactly what the endpoints would have said, statuses included (httpStatusOf), so the
// consumer's transaction logic cannot tell the difference.
import { join } from 'node:path';
import { httpStatusOf } from '../../shared/errors.ts';
import type { FileSystem } from '../fs/types.ts';
import { BodyLengthError, SegmentTooLargeError } from './consumer-errors.ts';
import type { ConsumerHttp, HttpResponse, SpillFn } from './http-client.ts';

/** The ingest log's consumer-facing verbs (reference §3.5), in-process. */
export interface LocalIngester {
  next(): Promise<{ id: string } | null>;
  readAll(id: string): Promise<Buffer>;
  /** A claim already read, streamed again. */
  reread(id: string): AsyncIterable<Buffer>;
  commit(id: string): Promise<unknown>;
  fail(id: string): Promise<void>;
  /** The size of a claimed segment, without reading it (null: unknown). */
  claimSize?(id: string): Promise<number | null>;
  /** Reads a claim as a stream (as `GET /ingest/read`): for a segment too large for readAll. */
  read?(id: string): { stream: AsyncIterable<Buffer>; size: number };
}

/** What `sizedIngester` needs of an IngestLog (node/ingest/segment-log.ts). */
export interface IngestLogLike {
  readonly root: string;
  next(): Promise<{ id: string; segmentId: string } | null>;
  readAll(id: string): Promise<Buffer>;
  read(id: string): { stream: AsyncIterable<Buffer>; size: number };
  reread(id: string): AsyncIterable<Buffer>;
  commit(id: string): Promise<unknown>;
  fail(id: string): Promise<void>;
}

/** Claims remembered for their sizes at most (the consumer settles each; this only bounds a leak). */
const MAX_TRACKED_CLAIMS = 4096;

/**
 * An ingest log as a LocalIngester that can tell a claim's size before reading it: the claimed
 * segment is the file `<ingest.path>/<segment id>.pending` (reference §3.3), so a stat gives it
 * and a segment too large for memory is never read whole.
 */
export function sizedIngester(log: IngestLogLike, fs: FileSystem): LocalIngester {
  const segments = new Map<string, string>(); // claim id → segment file id
  const settled = (id: string) => segments.delete(id);
  return {
    next: async () => {
      const c = await log.next();
      if (c !== null) {
        segments.set(c.id, c.segmentId);
        if (segments.size > MAX_TRACKED_CLAIMS) segments.delete(segments.keys().next().value as string);
      }
      return c;
    },
    claimSize: async (id) => {
      const seg = segments.get(id);
      if (seg === undefined) return null;
      return (await fs.stat(join(log.root, `${seg}.pending`))).size;
    },
    readAll: (id) => log.readAll(id),
    read: (id) => log.read(id),
    reread: (id) => log.reread(id),
    commit: (id) => {
      settled(id);
      return log.commit(id);
    },
    fail: (id) => {
      settled(id);
      return log.fail(id);
    },
  };
}

export interface LocalEndpoints {
  /** This node's API address as the peer list names it (`host:port`), or null while unknown. */
  self(): string | null;
  /** This process's ingest log, when it has one. */
  ingest?: LocalIngester;
  /** Stores a replicated segment exactly as `POST /store/replicate` does; resolves to its answer. */
  replicate?: (body: AsyncIterable<Buffer>) => Promise<string>;
}

const text = (status: number, s: string): HttpResponse => ({ status, body: Buffer.from(s) });

/** The endpoint's answer: its result, or the status and message its error handler would send. */
async function answer(op: () => Promise<HttpResponse>): Promise<HttpResponse> {
  try {
    return await op();
  } catch (err) {
    return text(httpStatusOf(err), `${(err as Error).message}\n`);
  }
}

/** Passes the body through, counting what is "sent" and stopping when the consumer aborts. */
async function* metered(
  body: AsyncIterable<Buffer>,
  signal: AbortSignal | undefined,
  onSent: ((bytes: number) => void) | undefined,
): AsyncGenerator<Buffer> {
  for await (const chunk of body) {
    signal?.throwIfAborted();
    onSent?.(chunk.length);
    yield chunk;
  }
}

export class LocalFirstHttp implements ConsumerHttp {
  constructor(
    private readonly remote: ConsumerHttp,
    private readonly local: LocalEndpoints,
  ) {}

  /** The path (and parsed query) when `url` names this node, else null. */
  private route(url: string): URL | null {
    const self = this.local.self();
    if (self === null) return null;
    const u = new URL(url);
    // URL drops a default port from `host`; peer addresses always carry one.
    return (u.port === '' ? `${u.host}:80` : u.host) === self ? u : null;
  }

  control(method: 'GET' | 'POST', url: string, signal?: AbortSignal): Promise<HttpResponse> {
    const u = this.route(url);
    const ingest = this.local.ingest;
    if (u === null || ingest === undefined) return this.remote.control(method, url, signal);
    const id = u.searchParams.get('id') ?? '';
    switch (`${method} ${u.pathname}`) {
      case 'GET /ingest/next':
        return answer(async () => {
          const claim = await ingest.next();
          return claim === null ? text(404, '404 page not found\n') : text(200, claim.id);
        });
      case 'POST /ingest/commit':
        return answer(async () => {
          await ingest.commit(id);
          return text(200, 'Commit OK');
        });
      case 'POST /ingest/failed':
        return answer(async () => {
          await ingest.fail(id);
          return text(200, 'Failed OK');
        });
      default:
        return this.remote.control(method, url, signal);
    }
  }

  async read(url: string, maxBytes: number, signal?: AbortSignal, spill?: SpillFn): Promise<HttpResponse> {
    const u = this.route(url);
    const ingest = this.local.ingest;
    if (u === null || ingest === undefined || u.pathname !== '/ingest/read')
      return this.remote.read(url, maxBytes, signal, spill);
    const id = u.searchParams.get('id') ?? '';
    // As over HTTP (where Content-Length tells): a segment too large is found before it is read.
    const size = await ingest.claimSize?.(id).catch(() => null);
    if (size !== undefined && size !== null && size > maxBytes) {
      const sink = spill === undefined || ingest.read === undefined ? null : await spill(size);
      if (sink === null || ingest.read === undefined) throw new SegmentTooLargeError(url, size, maxBytes);
      let n = 0;
      for await (const chunk of ingest.read(id).stream) {
        signal?.throwIfAborted();
        await sink.write(chunk);
        n += chunk.length;
      }
      return { status: 200, body: Buffer.alloc(0), spilled: n };
    }
    const r = await answer(async () => ({
      status: 200,
      body: await ingest.readAll(id),
      reopen: () => ingest.reread(id),
    }));
    // As the HTTP client: a segment beyond the caller's bound is an error, not an answer.
    if (r.status === 200 && r.body.length > maxBytes)
      throw new BodyLengthError(url, `body exceeds ${maxBytes} bytes`);
    return r;
  }

  upload(
    url: string,
    body: AsyncIterable<Buffer>,
    signal?: AbortSignal,
    onSent?: (bytes: number) => void,
  ): Promise<HttpResponse> {
    const u = this.route(url);
    const replicate = this.local.replicate;
    if (u === null || replicate === undefined || u.pathname !== '/store/replicate')
      return this.remote.upload(url, body, signal, onSent);
    return answer(async () => text(200, await replicate(metered(body, signal, onSent))));
  }

  close(): void {
    this.remote.close();
  }
}
