// The ingest HTTP API (reference §3.5), mounted at the root with full paths, plus the new
// `GET /ingest/stats` and `POST /ingest/write`. Status codes and bodies are OK Log's: plain-text
// errors ending in a newline (Go's http.Error), `404 page not found\n` for "nothing" and for
// unknown claims, success bodies without a newline.
import type { FastifyPluginAsync, FastifyReply } from 'fastify';
import { httpStatusOf, InvalidArgumentError } from '../../shared/errors.ts';
import type { IngestContext } from './context.ts';
import { type AckedWriter, drainBody, topicParam } from './http-write.ts';
import type { ConnectionCounts } from './index.ts';
import { CLAIM_ID } from './segment-log.ts';

const TEXT = 'text/plain; charset=utf-8';

export interface IngestStats {
  segments: {
    active: { count: number; bytes: number };
    flushed: { count: number; bytes: number };
    pending: { count: number; bytes: number };
  };
  connections: ConnectionCounts;
  written: { records: number; bytes: number };
}

export interface RoutesDeps {
  ctx: IngestContext;
  acked: AckedWriter;
  connections: () => ConnectionCounts;
  clusterState: () => unknown;
}

/**
 * A claim id from the query string. Malformed ids (path separators, `..`, anything but a UUID)
 * are refused here with 400, before they can reach a map lookup, let alone a path.
 */
function claimId(query: unknown): string {
  const id = (query as Record<string, unknown>).id;
  if (id === undefined || id === '') throw new InvalidArgumentError('missing id');
  if (typeof id !== 'string' || !CLAIM_ID.test(id))
    throw new InvalidArgumentError(`invalid id ${JSON.stringify(String(id)).slice(0, 80)}: not a UUID`);
  return id.toLowerCase();
}

function notFound(reply: FastifyReply): FastifyReply {
  return reply.code(404).type(TEXT).send('404 page not found\n');
}

export function ingestStats(deps: RoutesDeps): IngestStats {
  const s = deps.ctx.log.stats();
  return {
    segments: { active: s.active, flushed: s.flushed, pending: s.pending },
    connections: deps.connections(),
    written: { records: deps.ctx.tally.records, bytes: deps.ctx.tally.bytes },
  };
}

export function ingestRoutes(deps: RoutesDeps): FastifyPluginAsync {
  const { ctx, acked } = deps;
  const log = ctx.log;
  return async (app) => {
    app.get('/ingest/next', async (_req, reply) => {
      const claim = await log.next();
      if (!claim) return notFound(reply);
      return reply.type(TEXT).send(claim.id);
    });

    app.get('/ingest/read', async (req, reply) => {
      const { stream, size } = log.read(claimId(req.query));
      // Flushed segments never change, so the length is known up front.
      return reply.type(TEXT).header('content-length', size).send(stream);
    });

    app.post('/ingest/commit', async (req, reply) => {
      await log.commit(claimId(req.query));
      return reply.type(TEXT).send('Commit OK');
    });

    app.post('/ingest/failed', async (req, reply) => {
      await log.fail(claimId(req.query));
      return reply.type(TEXT).send('Failed OK');
    });

    app.get('/ingest/_segmentstate', async (_req, reply) => reply.type(TEXT).send(log.segmentState()));

    app.get('/ingest/_clusterstate', async (_req, reply) =>
      reply
        .type('application/json; charset=utf-8')
        .send(`${JSON.stringify(deps.clusterState() ?? null, null, 4)}\n`),
    );

    app.get('/ingest/stats', async (_req, reply) => reply.type('application/json').send(ingestStats(deps)));

    app.post('/ingest/write', async (req, reply) => {
      try {
        const topic = topicParam((req.query as Record<string, unknown>).topic);
        const result = await acked.handle(req.raw, topic);
        ctx.metrics.ackedWrites.inc({ code: '200' });
        return reply.type('application/json').send(result);
      } catch (err) {
        const status = (err as { status?: number }).status ?? httpStatusOf(err);
        ctx.metrics.ackedWrites.inc({ code: String(status) });
        // Read what is left of a refused body (bounded), so the client sees this answer rather
        // than a reset; beyond the bound, close the connection instead of reading on.
        const drained = await drainBody(req.raw, ctx.settings.maxWriteBody);
        if (!drained) reply.header('connection', 'close');
        throw err;
      }
    });
  };
}
