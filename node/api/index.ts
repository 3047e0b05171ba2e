// The HTTP server: fastify with pino logs, /health, /metrics, OK Log's request-duration metric,
// CORS as OK Log (plus exposing X-Oklog-* headers), and the subsystems' route plugins.
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyPluginAsync,
  type FastifyRequest,
  LogController,
} from 'fastify';
import type { Logger } from 'pino';
import { Histogram, type Registry } from 'prom-client';
import { httpStatusOf } from '../../shared/errors.ts';

export interface ApiServerOptions {
  logger: Logger;
  registry: Registry;
  plugins: FastifyPluginAsync[];
}

/** Path without the subsystem prefix and query, as OK Log labels it (`/next`, `/query`). */
function metricPath(req: FastifyRequest): string | null {
  const url = req.routeOptions.url ?? req.url.split('?')[0];
  const m = /^\/(ingest|store)(\/.*)$/.exec(url);
  return m ? m[2] : null;
}

export async function buildApiServer(opts: ApiServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: opts.logger as FastifyBaseLogger,
    // Request logging off (nodes log what they handle themselves), the fastify 5.8+ way: the
    // top-level disableRequestLogging option prints a deprecation warning at every start.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024 * 1024,
    forceCloseConnections: true,
    return503OnClosing: true,
  });
  // Bodies are streamed by the handlers from request.raw; never buffered or parsed here.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));

  const duration = new Histogram({
    name: 'oklog_api_request_duration_seconds',
    help: 'API request duration in seconds.',
    labelNames: ['method', 'path', 'status_code'],
    registers: [opts.registry],
  });
  app.addHook('onResponse', async (req, reply) => {
    const path = metricPath(req);
    if (path === null) return;
    duration.observe(
      { method: req.method, path, status_code: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });

  // CORS, as rs/cors defaults in OK Log, but HEAD allowed and X-Oklog-* exposed (§11.2 item 20).
  app.addHook('onRequest', async (req, reply) => {
    reply.header('Vary', 'Origin');
    if (!req.headers.origin) return;
    reply.header('Access-Control-Allow-Origin', '*');
    reply.header(
      'Access-Control-Expose-Headers',
      'X-Oklog-From, X-Oklog-To, X-Oklog-Q, X-Oklog-Regex, X-Oklog-Nodes-Queried, X-Oklog-Segments-Queried, X-Oklog-Max-Data-Set-Size, X-Oklog-Error-Count, X-Oklog-Duration, X-Oklog-Records-Matched, X-Oklog-Failed-Nodes',
    );
    if (req.method === 'OPTIONS' && req.headers['access-control-request-method']) {
      reply.header('Access-Control-Allow-Methods', 'GET, HEAD, POST');
      reply.header('Access-Control-Allow-Headers', 'Origin, Accept, Content-Type');
      return reply.code(200).send();
    }
  });

  app.setErrorHandler((err, req, reply) => {
    const status = httpStatusOf(err);
    if (status >= 500) req.log.error({ err, url: req.url }, 'request failed');
    reply
      .code(status)
      .type('text/plain; charset=utf-8')
      .send(`${(err as Error).message}\n`);
  });
  app.setNotFoundHandler((_req, reply) => {
    reply.code(404).type('text/plain; charset=utf-8').send('404 page not found\n');
  });

  app.all('/health', async (_req, reply) => reply.type('text/plain; charset=utf-8').send('OK\n'));
  app.get('/metrics', async (_req, reply) => {
    const body = await opts.registry.metrics();
    return reply.type(opts.registry.contentType).send(body);
  });

  for (const plugin of opts.plugins) await app.register(plugin);
  return app;
}
