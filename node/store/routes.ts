// The store's HTTP endpoints under /store (reference §4.2, §4.6, §4.10): replicate, the user
// query (fan-out), the per-node query, the redirect, cluster state and stats. Query responses are
// written on the raw response: headers go out as soon as the segments are selected (a peer's
// fan-out waits only for headers), the body streams with backpressure, and the record count goes
// out as an HTTP trailer after the body (`X-Oklog-Records-Matched`); HEAD sends it as a header.
import type { ServerResponse } from 'node:http';
import { networkInterfaces } from 'node:os';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { describeError } from '../../shared/errors.ts';
import { ULID_LENGTH } from '../../shared/ulid.ts';
import type { Peers } from '../cluster/peers.ts';
import { MemoryBudget, QueryBusyError } from './budget.ts';
import { NoStoreNodesError } from './errors.ts';
import { type FailedNode, type Fanout, type LocalNode, lineAligned } from './fanout.ts';
import { IdleCollector } from './gc-nudge.ts';
import { mergeSorted } from './merge.ts';
import type { StoreMetrics } from './metrics.ts';
import { LocalQuery } from './query.ts';
import { QueryGate } from './query-gate.ts';
import { H, type QueryStats, queryHeaders } from './query-headers.ts';
import { forwardedQuery, parseQuery, type QueryParams } from './query-params.ts';
import { receiveSegment } from './replicate.ts';
import { abortWhenGone, pipeRecords } from './respond.ts';
import type { ScanPool } from './scan-pool.ts';
import type { ScanFilter } from './segment-reader.ts';
import type { SegmentEntry, StoreLog } from './store-log.ts';

export interface StoreRoutesOptions {
  log: StoreLog;
  peers: Peers;
  fanout: Fanout;
  metrics: StoreMetrics;
  logger: Logger;
  clusterState: () => unknown;
  /** -store.query-concurrency */
  queryConcurrency: number;
  /** -store.segment-buffer-size */
  bufferSize: number;
  /** Scan workers for queries (optional: without, files are scanned on the main thread). */
  pool?: ScanPool;
  /** Files at least twice this size are scanned in parallel ranges (default 16 MiB). */
  splitBytes?: number;
  /** Read-ahead bytes all queries of this node may hold at once (-store.query-memory, 64 MiB). */
  queryMemory?: number;
  /** Called after a replicated segment is stored (live streams). */
  onReplicated?: (entry: SegmentEntry) => void;
  /** Counts queries in progress and refuses new ones at shutdown (default: a gate of its own). */
  queryGate?: QueryGate;
}

function rawQueryOf(req: FastifyRequest): string {
  const url = req.raw.url ?? '';
  const i = url.indexOf('?');
  return i < 0 ? '' : url.slice(i + 1);
}

/** Takes over the response: headers set so far by hooks (CORS) are carried over. */
function takeOver(reply: FastifyReply): ServerResponse {
  reply.hijack();
  const res = reply.raw;
  for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v);
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  return res;
}

function writeHeaders(
  res: ServerResponse,
  status: number,
  headers: Record<string, string>,
  trailers: string[],
) {
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  if (trailers.length > 0) res.setHeader('Trailer', trailers.join(', '));
  res.writeHead(status);
  res.flushHeaders();
}

function failedNodesHeader(failed: readonly FailedNode[]): string {
  return failed.map((f) => f.node).join(', ');
}

/**
 * Stores one replicated segment (`POST /store/replicate`'s work, also called in-process by this
 * node's own consumer): validated (unless `trusted`: merged by this process's consumer from
 * segments it validated), counted, announced to live streams. Resolves to the answer.
 */
export function replicaReceiver(
  opts: Pick<StoreRoutesOptions, 'log' | 'metrics' | 'onReplicated'>,
  trusted = false,
): (body: AsyncIterable<Buffer>) => Promise<string> {
  return async (body) => {
    try {
      const r = await receiveSegment(opts.log, body, trusted);
      opts.metrics.replicatedSegments.inc({ direction: 'ingress' });
      opts.metrics.replicatedBytes.inc({ direction: 'ingress' }, r.bytes);
      if (r.entry === null) return 'No records\n';
      opts.onReplicated?.(r.entry);
      return 'OK\n';
    } catch (err) {
      if ((err as { status?: number }).status === 400) opts.metrics.replicateRejected.inc();
      throw err;
    }
  };
}

export function storeRoutes(opts: StoreRoutesOptions): FastifyPluginAsync {
  const { log, metrics } = opts;
  const receive = replicaReceiver(opts);
  const budget = new MemoryBudget(opts.queryMemory);
  budget.onChange = () => {
    metrics.queryMemoryBytes.set(budget.inUse);
    metrics.queryMemoryWaiting.set(budget.waiting);
  };
  const idle = new IdleCollector();
  const gate = opts.queryGate ?? new QueryGate();
  /**
   * Runs a query handler inside the gate (503 once the node stops) and the idle collector. The
   * query leaves the gate once its response is flushed to the socket (or the socket is gone), not
   * when the handler returns: the tail of a body to a slow reader still sits in the response's
   * buffer then, and closing the server would drop it.
   */
  const gated =
    (answer: (req: FastifyRequest, reply: FastifyReply) => Promise<void>) =>
    async (req: FastifyRequest, reply: FastifyReply) => {
      gate.enter();
      idle.begin();
      try {
        await answer(req, reply);
      } finally {
        idle.end();
        const res = reply.raw;
        if (res.writableFinished || res.destroyed) gate.leave();
        else {
          let left = false;
          const leave = () => {
            if (left) return;
            left = true;
            gate.leave();
          };
          res.once('finish', leave);
          res.once('close', leave);
        }
      }
    };

  // The filter is the one parseQuery compiled: a regex is translated and compiled once per
  // request, on the thread that answers every request (a pattern at the caps costs milliseconds).
  const localQuery = (
    params: QueryParams,
    filter: ScanFilter,
    signal: AbortSignal,
    logger: Pick<Logger, 'warn'>,
  ) =>
    new LocalQuery(log, filter, params, {
      concurrency: opts.queryConcurrency,
      bufferSize: opts.bufferSize,
      signal,
      pool: opts.pool,
      splitBytes: opts.splitBytes,
      budget,
      onMalformed: (n, segments) => {
        metrics.queryMalformedLines.inc(n);
        logger.warn(
          { lines: n, segments: segments.map((e) => e.base) },
          'store: query skipped lines that are not records; repairing the segments that hold them',
        );
        // Once per segment (StoreLog.repair never throws): the good records move to a new
        // segment, the rest aside to .bad, so later queries and compaction see clean files.
        for (const e of segments) void log.repair(e, `query found ${n} line(s) that are not records`);
      },
    });

  /** Too many queries already wait for read-ahead memory: 503, try again in a second. */
  const refuseBusy = (reply: FastifyReply, err: QueryBusyError): never => {
    metrics.queryBusy.inc();
    reply.header('Retry-After', String(err.retryAfterSeconds));
    throw err;
  };

  const answerNodeQuery = async (req: FastifyRequest, reply: FastifyReply) => {
    const t0 = performance.now();
    const { params, filter } = parseQuery(rawQueryOf(req), log.now()); // 400 before anything else
    const head = req.method === 'HEAD';
    const gone = new AbortController();
    // Selecting segments may fail (503 while shutting down): still before the response is ours.
    const q = localQuery(params, filter, gone.signal, req.log);
    try {
      q.admit();
    } catch (err) {
      q.close();
      if (err instanceof QueryBusyError) refuseBusy(reply, err);
      throw err;
    }
    const res = takeOver(reply);
    abortWhenGone(res, gone);
    try {
      const headers = queryHeaders(params, q.stats, performance.now() - t0);
      if (head) {
        headers[H.recordsMatched] = String(await q.count(params.limit));
        headers[H.duration] = queryHeaders(params, q.stats, performance.now() - t0)[H.duration];
        res.writeHead(200, headers);
        res.end();
      } else {
        writeHeaders(res, 200, headers, [H.recordsMatched]);
        const r = await pipeRecords(q.records(), res, params.limit, gone.signal);
        if (r.completed) {
          res.addTrailers({ [H.recordsMatched]: String(r.records) });
          res.end();
        }
      }
      metrics.queries.inc({ kind: 'node', result: 'ok' });
    } catch (err) {
      metrics.queries.inc({ kind: 'node', result: 'error' });
      fail(res, err, req.log);
    } finally {
      q.close();
    }
  };

  const answerUserQuery = async (req: FastifyRequest, reply: FastifyReply) => {
    const t0 = performance.now();
    const { params, filter } = parseQuery(rawQueryOf(req), log.now());
    const raw = forwardedQuery(rawQueryOf(req), params);
    const nodes = opts.peers.current('store');
    if (nodes.length === 0) throw new NoStoreNodesError();
    const head = req.method === 'HEAD';
    const gone = new AbortController();
    // HEAD counts distinct records: with several nodes (replicas), only merging what they hold
    // can. They are asked for ULIDs only (`ulids=true`, 27 bytes per match, not the records);
    // merged by ULID with dedupe and counted, the count is exact.
    const ulids = head && nodes.length > 1;
    const method = head && !ulids ? 'HEAD' : 'GET';
    const nodeRaw = ulids ? `${raw === '' ? '' : `${raw}&`}ulids=true` : raw;
    const nodeParams: QueryParams = ulids ? { ...params, ulids: true } : { ...params, ulids: false };
    const local: LocalNode = {
      // The cluster names this node's own API address exactly; the host/port guess is only for
      // peer lists that cannot (it would confuse two nodes on one port of a multi-address host).
      isSelf: (node) => {
        const me = opts.peers.selfApiAddr?.();
        return me ? node === me : isSelf(node, req.socket.localPort);
      },
      answer: async (node, m, signal) => {
        const q = localQuery(nodeParams, filter, signal, req.log); // same terms and bounds
        try {
          q.admit(); // busy: this node fails like a remote one answering 503
        } catch (err) {
          q.close();
          throw err;
        }
        const answer = { node, status: 200, stats: q.stats, close: () => q.close() };
        if (m === 'HEAD')
          return { ...answer, recordsMatched: await q.count(params.limit), body: noRecords() };
        return { ...answer, recordsMatched: null, body: q.records() };
      },
    };
    abortWhenGone(reply.raw, gone); // a client gone while the nodes are asked stops them too
    const fan = await opts.fanout.query(nodes, method, nodeRaw, gone.signal, local);
    if (fan.answers.length === 0 && fan.failed.every((f) => f.status === 503)) {
      // Every node is busy (or shutting down): say so, rather than 206 with nothing.
      fan.close();
      refuseBusy(
        reply,
        new QueryBusyError(
          { nodes: fan.failed.length },
          'every store node is busy or stopping: retry shortly',
        ),
      );
    }
    const res = takeOver(reply);
    try {
      const stats = sumStats(
        fan.answers.map((a) => a.stats),
        fan.failed.length,
      );
      const headers = queryHeaders(params, stats, performance.now() - t0);
      if (fan.failed.length > 0) headers[H.failedNodes] = failedNodesHeader(fan.failed);
      const status = fan.failed.length > 0 ? 206 : 200;
      const lateFailures: FailedNode[] = [];
      const body = mergedBody(fan.answers, lateFailures, req.log, ulids);
      if (head) {
        let matched: number;
        if (method === 'HEAD') matched = fan.answers[0]?.recordsMatched ?? 0;
        else matched = (await pipeRecords(body, null, params.limit, gone.signal)).records;
        headers[H.recordsMatched] = String(matched);
        headers[H.duration] = queryHeaders(params, stats, performance.now() - t0)[H.duration];
        if (lateFailures.length > 0) {
          headers[H.errorCount] = String(stats.errorCount + lateFailures.length);
          headers[H.failedNodes] = failedNodesHeader([...fan.failed, ...lateFailures]);
        }
        res.writeHead(lateFailures.length > 0 ? 206 : status, headers);
        res.end();
      } else {
        writeHeaders(res, status, headers, [H.recordsMatched, H.errorCount, H.failedNodes]);
        const r = await pipeRecords(body, res, params.limit, gone.signal);
        if (r.completed) {
          const trailers: Record<string, string> = { [H.recordsMatched]: String(r.records) };
          if (lateFailures.length > 0) {
            // Headers are long gone: a node that failed mid-body is reported in the trailers.
            trailers[H.errorCount] = String(stats.errorCount + lateFailures.length);
            trailers[H.failedNodes] = failedNodesHeader([...fan.failed, ...lateFailures]);
          }
          res.addTrailers(trailers);
          res.end();
        }
      }
      metrics.queries.inc({ kind: 'query', result: fan.failed.length > 0 ? 'partial' : 'ok' });
    } catch (err) {
      metrics.queries.inc({ kind: 'query', result: 'error' });
      fail(res, err, req.log);
    } finally {
      fan.close();
    }
  };

  return async (app: FastifyInstance) => {
    app.post('/store/replicate', async (req, reply) => {
      try {
        const answer = await receive(req.raw);
        return reply.type('text/plain; charset=utf-8').send(answer);
      } catch (err) {
        if ((err as { status?: number }).status === 400)
          req.log.warn({ err: describeError(err) }, 'store: rejected replication body');
        // Do not read the rest of a rejected (possibly huge) body: close the connection instead.
        if (!req.raw.complete) reply.header('Connection', 'close');
        throw err;
      }
    });
    app.route({ method: ['GET', 'HEAD'], url: '/store/query', handler: gated(answerUserQuery) });
    app.route({ method: ['GET', 'HEAD'], url: '/store/_query', handler: gated(answerNodeQuery) });
    app.get('/store/', async (req, reply) => {
      const raw = rawQueryOf(req);
      // OK Log's Location lacked the /store prefix (§11.2 item 14).
      return reply.redirect(`/store/query${raw === '' ? '' : `?${raw}`}`, 307);
    });
    app.get('/store/_clusterstate', async (_req, reply) => reply.send(opts.clusterState()));
    app.get('/store/stats', async (_req, reply) => reply.send(log.stats()));
  };
}

async function* noRecords(): AsyncGenerator<Buffer> {}

/** Addresses of this host's interfaces (refreshed now and then: interfaces come and go). */
let localHosts: { at: number; hosts: Set<string> } | null = null;
function hostIsLocal(host: string): boolean {
  const now = Date.now();
  if (localHosts === null || now - localHosts.at > 60_000) {
    const hosts = new Set(['localhost', '127.0.0.1', '::1']);
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) hosts.add(a.address);
    localHosts = { at: now, hosts };
  }
  return localHosts.hosts.has(host);
}

/** True when the peer `host:port` is this very server (same port, one of this host's addresses). */
function isSelf(node: string, localPort: number | undefined): boolean {
  try {
    const u = new URL(`http://${node}`);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const port = Number(u.port || 80);
    return port === localPort && hostIsLocal(host);
  } catch {
    return false;
  }
}

function sumStats(list: readonly QueryStats[], failed: number): QueryStats {
  const s: QueryStats = { nodesQueried: 0, segmentsQueried: 0, maxDataSetSize: 0, errorCount: failed };
  for (const x of list) {
    s.nodesQueried += x.nodesQueried;
    s.segmentsQueried += x.segmentsQueried;
    s.maxDataSetSize = Math.max(s.maxDataSetSize, x.maxDataSetSize);
    s.errorCount += x.errorCount;
  }
  return s;
}

/** The nodes' bodies as one sorted, deduplicated stream; a node failing mid-body is noted. */
function mergedBody(
  answers: readonly { node: string; body: AsyncIterable<Buffer> }[],
  lateFailures: FailedNode[],
  logger: Pick<Logger, 'warn'>,
  ulids = false,
): AsyncIterable<Buffer> {
  const noteFailure = (node: string, err: unknown) => {
    lateFailures.push({ node, reason: describeError(err) });
    logger.warn({ node, err: describeError(err) }, 'store: query node failed mid-answer');
  };
  if (answers.length === 1) {
    // One node: its body is already sorted and deduplicated; pass it through, chunks as they come.
    const a = answers[0];
    return (async function* () {
      try {
        yield* a.body;
      } catch (err) {
        noteFailure(a.node, err);
      }
    })();
  }
  return mergeSorted(
    answers.map((a) => lineAligned(a.body, a.node)),
    {
      onInputError: (i, err) => noteFailure(answers[i].node, err),
      // ULID-only answers are a ULID and a newline per record.
      minLineBytes: ulids ? ULID_LENGTH : undefined,
    },
  );
}

/** An error after the response started: cut the connection so the client sees an incomplete body. */
function fail(res: ServerResponse, err: unknown, logger: Pick<Logger, 'error'>): void {
  logger.error({ err: describeError(err) }, 'store: query failed');
  if (!res.headersSent) {
    res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end(`${describeError(err)}\n`);
    return;
  }
  res.destroy(err instanceof Error ? err : new Error(String(err)));
}
