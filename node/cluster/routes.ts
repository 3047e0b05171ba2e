// HTTP routes of the cluster, as a fastify plugin. `clusterRoutes(get)` can be registered before
// the cluster exists (fastify wants every route before listen, and the cluster is started once the
// API port is known): until `get()` returns a cluster, the routes answer 503.
import type { FastifyPluginAsync } from 'fastify';
import type { PeerInfo } from './peers.ts';

export interface PeerSource {
  /** Live members with known type and API address. */
  livePeers(): PeerInfo[];
}

export function clusterRoutes(get: () => PeerSource | null | undefined): FastifyPluginAsync {
  return async (app) => {
    app.get('/cluster/peers', async (_req, reply) => {
      const c = get();
      if (!c) return reply.code(503).type('text/plain; charset=utf-8').send('cluster not started\n');
      return reply.send(c.livePeers());
    });
  };
}
