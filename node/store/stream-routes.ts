// Live streaming endpoints (reference §4.9, with §11.2 items 11 and 12 fixed):
//
// `GET /store/_stream?q=&regex=&topic=` (internal): subscribes to this node's StreamRegistry and
//   writes every matching record replicated to this node from now on, with its newline, as soon
//   as it is published. A subscriber too slow to keep up is dropped by the registry; its
//   connection is then closed without a clean end.
//
// `GET /store/stream?q=&regex=&topic=&window=` (user-facing): fans out to every store node's
//   `_stream` (StreamFanout), removes the replicas' copies and orders records within the window
//   (WindowDeduper), and writes them every window/10. Headers go out at once (200,
//   text/plain; charset=utf-8), so a client never waits for the first record to know the stream
//   is on. When the client goes, every upstream connection is closed.
//
// When the node shuts down, both end their responses cleanly (the user stream after writing what
// its window holds), so a client can tell a shutdown from a crash.
//
// Both answer 400 (before any header) for an invalid regex or topic.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { peerAddress } from '../../shared/addr.ts';
import { parseDuration } from '../../shared/time.ts';
import type { Peers } from '../cluster/peers.ts';
import { compileFilter, type FilterSpec, parseRegexParam } from './filter.ts';
import type { StreamRegistry } from './stream.ts';
import { StreamFanout } from './stream-fanout.ts';
import { WindowDeduper } from './window.ts';

export interface StreamRoutesOptions {
  registry: StreamRegistry;
  peers: Peers;
  logger: Logger;
  /** How often a user stream re-reads the store peers (default 1 s). */
  peerRefreshMs?: number;
  /** Delay before a failed upstream connection is retried (default 1 s). */
  retryMs?: number;
  now?: () => number;
  /** Bounds of each user stream's window (see window.ts). */
  maxBufferedBytes?: number;
  maxRemembered?: number;
}

export const DEFAULT_WINDOW_MS = 3000;
export const MIN_WINDOW_MS = 100;

/**
 * `window`: a Go duration; missing or unparsable means 3 s, as OK Log (a stream should start, not
 * fail, over a typo in an optional knob); raised to at least 100 ms.
 */
export function parseWindow(value: string | null): number {
  if (value === null || value.trim() === '') return DEFAULT_WINDOW_MS;
  let ms: number;
  try {
    ms = parseDuration(value.trim());
  } catch {
    return DEFAULT_WINDOW_MS;
  }
  return Number.isFinite(ms) ? Math.max(MIN_WINDOW_MS, ms) : DEFAULT_WINDOW_MS;
}

export function filterSpec(params: URLSearchParams): FilterSpec {
  const topic = params.get('topic');
  return {
    q: params.get('q') ?? '',
    regex: parseRegexParam(params.get('regex') ?? undefined),
    topic: topic === null || topic === '' ? undefined : topic,
  };
}

function rawQueryOf(req: FastifyRequest): string {
  const url = req.raw.url ?? '';
  const i = url.indexOf('?');
  return i < 0 ? '' : url.slice(i + 1);
}

/** Takes the response over from fastify and sends the headers now. */
function startStream(reply: FastifyReply): ServerResponse {
  reply.hijack();
  const res = reply.raw;
  for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v);
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.setHeader('Cache-Control', 'no-cache');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.writeHead(200);
  res.flushHeaders();
  return res;
}

/** Resolves on 'drain' or 'close' of `res`, or when `signal` aborts; leaves no listener behind. */
function drained(res: ServerResponse, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    if (signal.aborted || res.destroyed) {
      resolve();
      return;
    }
    res.on('drain', done);
    res.on('close', done);
    signal.addEventListener('abort', done);
  });
}

function who(req: IncomingMessage): string {
  return peerAddress(req.socket);
}

export function streamRoutes(opts: StreamRoutesOptions): FastifyPluginAsync {
  const { registry, logger } = opts;
  const now = opts.now ?? Date.now;

  const nodeStream = async (req: FastifyRequest, reply: FastifyReply) => {
    const spec = filterSpec(new URLSearchParams(rawQueryOf(req)));
    const match = compileFilter(spec); // 400 first
    const sub = registry.subscribe({ match, spec, label: who(req.raw) }); // 503 when shutting down
    const res = startStream(reply);
    res.once('close', () => sub.unsubscribe());
    try {
      for (;;) {
        const batch = await sub.take();
        if (batch === null || res.destroyed) break;
        let ok = true;
        res.cork(); // one writev for everything queued
        for (const b of batch) ok = res.write(b) && ok;
        res.uncork();
        if (!ok) await drained(res, sub.closedSignal);
      }
      if (!res.destroyed) res.end();
    } catch {
      // Dropped as too slow (logged and counted by the registry): cut the connection, so the
      // client sees an error rather than a clean end of stream.
      res.destroy();
    } finally {
      sub.unsubscribe();
    }
  };

  const userStream = async (req: FastifyRequest, reply: FastifyReply) => {
    const raw = rawQueryOf(req);
    const params = new URLSearchParams(raw);
    compileFilter(filterSpec(params)); // invalid regex/topic: 400 here, not 400s from every node
    const windowMs = parseWindow(params.get('window'));
    registry.assertOpen(); // 503 when shutting down
    const res = startStream(reply);
    const window = new WindowDeduper({
      windowMs,
      maxBufferedBytes: opts.maxBufferedBytes,
      maxRemembered: opts.maxRemembered,
    });
    const fanout = new StreamFanout({
      peers: opts.peers,
      rawQuery: raw,
      logger,
      onRecord: (line) => window.add(line, now()),
      onFailure: () => registry.metrics.upstreamFailures.inc(),
      refreshMs: opts.peerRefreshMs,
      retryMs: opts.retryMs,
      now,
    });
    // While the client is not reading, upstream reading stops too (and the window stops
    // emitting): memory stays bounded; an upstream node that overflows drops us and we reconnect.
    let blocked = false;
    const tick = setInterval(
      () => {
        if (blocked || res.destroyed) return;
        const out = window.drain(now());
        if (out === null || res.write(out)) return;
        blocked = true;
        fanout.pause();
        res.once('drain', () => {
          blocked = false;
          fanout.resume();
        });
      },
      Math.max(10, Math.floor(windowMs / 10)),
    );
    // The node is shutting down: what the window holds goes out, then a clean end of the response,
    // so the client can tell a shutdown from a crash (a cut connection).
    const end = () => {
      clearInterval(tick);
      fanout.stop();
      if (res.destroyed) return;
      const rest = window.drain(Number.POSITIVE_INFINITY);
      if (rest !== null) res.write(rest);
      res.end();
    };
    registry.shutdown.addEventListener('abort', end, { once: true });
    res.once('close', () => {
      registry.shutdown.removeEventListener('abort', end);
      clearInterval(tick);
      fanout.stop();
      logger.debug(
        { who: who(req.raw), duplicates: window.duplicates, malformed: fanout.malformed },
        'store: user stream closed',
      );
    });
    fanout.start();
  };

  return async (app) => {
    app.get('/store/_stream', nodeStream);
    app.get('/store/stream', userStream);
  };
}
