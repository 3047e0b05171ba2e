// `oklog ingest|store|ingeststore`: flags → filesystem → subsystems → HTTP server → gossip, and a
// graceful shutdown on SIGTERM/SIGINT (leave the cluster, stop listeners, flush, release locks).
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { joinHostPort, parseAddr } from '../shared/addr.ts';
import { describeError, InvalidArgumentError } from '../shared/errors.ts';
import { type FlagSpec, type FlagValues, parseFlags, usage } from '../shared/flags.ts';
import { listenHost } from '../shared/listen.ts';
import { buildApiServer } from './api/index.ts';
import { clusterFlagSpecs, startCluster } from './cluster/index.ts';
import type { PeerInfo, PeerRole, Peers, PeerType } from './cluster/peers.ts';
import { createFileSystem } from './fs/index.ts';
import { sizedIngester } from './store/local-http.ts';

export type NodeMode = PeerType;

// Subsystems are loaded only by the modes that use them.
const loadIngest = () => import('./ingest/index.ts');
const loadStore = () => import('./store/index.ts');

const SEGMENT_LIMIT_FLAGS = ['ingest.segment-flush-size', 'ingest.bulk-max-size'];

/**
 * In an ingeststore both halves' flags are known: refuse, before anything starts, ingest limits
 * that would cut segments its own consumers cannot read into memory (they would be quarantined).
 * An ingest node cannot know its store nodes' target size: beyond the smallest limit any store
 * node has (512 MiB) it warns.
 */
async function checkSegmentLimits(mode: NodeMode, values: FlagValues, logger: Logger): Promise<void> {
  const { MIN_SEGMENT_LIMIT: floor, maxSegmentBytesFor } = await import('./store/limits.ts');
  if (mode === 'ingest') {
    for (const name of SEGMENT_LIMIT_FLAGS)
      if (Number(values[name]) > floor)
        logger.warn(
          { flag: name, value: Number(values[name]), max: floor },
          `-${name} is above ${floor} bytes: store nodes whose -store.segment-target-size is smaller quarantine such segments instead of storing them`,
        );
    return;
  }
  if (Number(values['store.segment-consumers']) <= 0) return;
  const max = maxSegmentBytesFor(Number(values['store.segment-target-size']));
  for (const name of SEGMENT_LIMIT_FLAGS) {
    const v = Number(values[name]);
    if (Number.isFinite(v) && v > max)
      throw new InvalidArgumentError(
        `-${name} ${v} is larger than the ${max} bytes a segment consumer reads (max(-store.segment-target-size, 512 MiB)): lower it or raise -store.segment-target-size`,
        { flag: name, value: v, max },
      );
  }
}

export async function nodeFlagSpecs(mode: NodeMode): Promise<FlagSpec[]> {
  const specs: FlagSpec[] = [
    { name: 'debug', kind: 'bool', default: false, help: 'debug logging' },
    { name: 'api', kind: 'string', default: 'tcp://0.0.0.0:7650', help: 'listen address for the HTTP API' },
    ...clusterFlagSpecs(),
    { name: 'filesystem', kind: 'string', default: 'real', help: 'real, virtual, nop' },
  ];
  if (mode !== 'store') specs.push(...(await loadIngest()).ingestFlagSpecs(mode));
  if (mode !== 'ingest') specs.push(...(await loadStore()).storeFlagSpecs(mode));
  return specs;
}

/** Peers that delegate to the cluster once it has started (the API port is known only then). */
class DeferredPeers implements Peers {
  target: Peers | null = null;
  current(role: PeerRole): string[] {
    return this.target ? this.target.current(role) : [];
  }
  selfApiAddr(): string | null {
    return this.target?.selfApiAddr?.() ?? null;
  }
  members(): PeerInfo[] {
    return this.target ? this.target.members() : [];
  }
}

export interface RunningNode {
  apiAddress: string;
  stop(): Promise<void>;
}

/** Starts a node; resolves once every listener is bound. */
export async function startNode(mode: NodeMode, values: FlagValues, set: Set<string>, logger: Logger) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const fs = createFileSystem(String(values.filesystem));
  const api = parseAddr(String(values.api), 7650);
  if (!['tcp', 'tcp4', 'tcp6'].includes(api.network))
    throw new InvalidArgumentError(
      `-api: unsupported network ${JSON.stringify(api.network)}; use tcp://host:port`,
    );
  const peers = new DeferredPeers();
  let clusterState: () => unknown = () => ({});
  const stateFn = () => clusterState();
  if (mode !== 'store') await checkSegmentLimits(mode, values, logger);

  const ingest =
    mode !== 'store'
      ? await (await loadIngest()).startIngest({
          mode,
          flags: values,
          fs,
          logger,
          registry,
          clusterState: stateFn,
        })
      : null;
  let store: Awaited<ReturnType<Awaited<ReturnType<typeof loadStore>>['startStore']>> | null = null;
  try {
    if (mode !== 'ingest') {
      // A lone ingeststore (no -peer) replicates to itself only (OK Log #51), unless told otherwise.
      const lone = mode === 'ingeststore' && (values.peer as string[]).length === 0;
      const flags =
        lone && !set.has('store.segment-replication-factor')
          ? { ...values, 'store.segment-replication-factor': 1 }
          : values;
      store = await (await loadStore()).startStore({
        mode,
        flags,
        fs,
        logger,
        registry,
        peers,
        clusterState: stateFn,
        // Sized: a claim too large for memory is found from its file before it is read.
        localIngest: ingest ? sizedIngester(ingest.log, fs) : undefined,
      });
    }
  } catch (err) {
    await ingest?.stop();
    throw err;
  }

  const plugins = [ingest?.routes, store?.routes].filter((p) => p !== undefined && p !== null);
  const app = await buildApiServer({ logger, registry, plugins });
  let cluster: Awaited<ReturnType<typeof startCluster>> | null = null;
  try {
    // Gossip starts before the API listens: fastify accepts routes only until it is listening, and
    // the cluster's routes must be registered. The advertised API port is therefore the configured
    // one (an -api port of 0 would be gossiped as 0).
    cluster = await startCluster({
      bind: String(values.cluster),
      advertiseAddr: String(values['cluster.advertise-addr'] ?? ''),
      seeds: values.peer as string[],
      keyFile: String(values['cluster.key'] ?? ''),
      type: mode,
      apiPort: api.port,
      logger,
      registry,
    });
    peers.target = cluster;
    clusterState = () => cluster?.clusterState();
    await app.register(cluster.routes);
    await app.listen({ ...(await listenHost(api)), port: api.port });
  } catch (err) {
    await app.close().catch(() => {});
    await cluster?.stop().catch(() => {});
    await store?.stop();
    await ingest?.stop();
    throw err;
  }
  const bound = app.server.address();
  const apiAddress =
    typeof bound === 'object' && bound ? joinHostPort(bound.address, bound.port) : String(bound);
  logger.info({ mode, api: apiAddress }, 'node started');

  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      logger.info('shutting down');
      await cluster?.leave(1000).catch((err: unknown) => logger.warn({ err }, 'cluster leave failed'));
      // Peers now route around this node: refuse new queries, let those in progress finish
      // (awaited by store.stop(), while the consumers and the ingest log stop meanwhile).
      void store?.drainQueries();
      // The store's consumers first: a batch in flight must be committed (or failed) while the
      // ingest log still takes commits. Closing the log first hands its claims back to .flushed,
      // the commit then fails, and the batch, already stored, is consumed again after a restart.
      await store?.stopConsumers();
      await ingest?.stop();
      await store?.stop();
      await app.close();
      await cluster?.stop();
      logger.info('shutdown complete');
    })();
    return stopping;
  };
  return { apiAddress, stop } satisfies RunningNode;
}

/** Entry point for the node modes; returns the process exit code. */
export async function runNode(mode: NodeMode, argv: string[]): Promise<number> {
  const specs = await nodeFlagSpecs(mode);
  let parsed: ReturnType<typeof parseFlags>;
  try {
    parsed = parseFlags(specs, argv);
  } catch (err) {
    process.stderr.write(`${describeError(err)}\n${usage(`oklog ${mode}`, specs)}`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(usage(`oklog ${mode}`, specs));
    return 0;
  }
  if (parsed.positional.length > 0) {
    process.stderr.write(`unexpected argument ${JSON.stringify(parsed.positional[0])}\n`);
    return 2;
  }
  const logger = pino(
    { level: parsed.values.debug ? 'debug' : 'info', base: { mode } },
    pino.destination({ fd: 2, sync: true }),
  );
  let node: RunningNode;
  try {
    node = await startNode(mode, parsed.values, parsed.set, logger);
  } catch (err) {
    const msg = describeError(err);
    logger.error({ code: (err as { code?: string }).code }, msg);
    if (!(err instanceof InvalidArgumentError)) logger.debug({ err }, 'start-up failure');
    process.stderr.write(`oklog ${mode}: ${msg}\n`);
    return 1;
  }
  return await new Promise<number>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      logger.info({ signal: sig }, 'received signal');
      node.stop().then(
        () => resolve(0),
        (err) => {
          logger.error({ err }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
}

export const nullStream = new Writable({ write: (_c, _e, cb) => cb() });
