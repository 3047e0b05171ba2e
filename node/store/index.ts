// The store subsystem (reference §1.5, §4): flags, and startStore, which opens the store log
// (lock + recovery), starts the compacter and the segment consumers, and provides the /store
// routes (replicate, query, stream, stats).
import { join } from 'node:path';
import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { InvalidArgumentError } from '../../shared/errors.ts';
import type { FlagSpec, FlagValues } from '../../shared/flags.ts';
import { parseDuration } from '../../shared/time.ts';
import type { Peers } from '../cluster/peers.ts';
import type { FileSystem } from '../fs/index.ts';
import { DEFAULT_QUERY_MEMORY } from './budget.ts';
import { Compactor } from './compactor.ts';
import { createConsumerMetrics, SegmentConsumer } from './consumer.ts';
import { Fanout } from './fanout.ts';
import { NodeConsumerHttp } from './http-client.ts';
import { LocalFirstHttp, type LocalIngester } from './local-http.ts';
import { createStoreMetrics } from './metrics.ts';
import { SegmentPublisher } from './publish.ts';
import { FailureMemo, QUARANTINE_DIR } from './quarantine.ts';
import { QueryGate } from './query-gate.ts';
import { openStoreLog } from './recovery.ts';
import { replicaReceiver, storeRoutes } from './routes.ts';
import { defaultScanWorkers, ScanPool } from './scan-pool.ts';
import type { SegmentEntry, StoreLog } from './store-log.ts';
import { createStreamMetrics, StreamRegistry } from './stream.ts';
import { streamRoutes } from './stream-routes.ts';

export type { StoreLog } from './store-log.ts';

export function storeFlagSpecs(mode: string): FlagSpec[] {
  return [
    {
      name: 'store.path',
      kind: 'string',
      default: 'data/store',
      help: 'path holding segment files for storage tier',
    },
    {
      name: 'store.segment-consumers',
      kind: 'int',
      default: 1,
      help: 'concurrent segment consumers',
    },
    {
      name: 'store.segment-target-size',
      kind: 'int',
      default: 134217728,
      help: 'try to keep store segments about this size',
    },
    {
      name: 'store.segment-target-age',
      kind: 'duration',
      default: '3s',
      help: 'replicate once the aggregate segment is this old',
    },
    {
      name: 'store.segment-delay',
      kind: 'duration',
      default: '100ms',
      help: 'request next segment files after this delay',
    },
    {
      name: 'store.segment-buffer-size',
      kind: 'int',
      default: 1048576,
      help: 'per-segment in-memory read buffer during queries',
    },
    {
      name: 'store.segment-replication-factor',
      kind: 'int',
      default: 2,
      help:
        mode === 'ingeststore'
          ? 'how many copies of each segment to replicate (a lone ingeststore, without -peer, uses 1 unless this is set)'
          : 'how many copies of each segment to replicate',
    },
    {
      name: 'store.segment-retain',
      kind: 'duration',
      default: '168h0m0s',
      help: 'retention period for segment files',
    },
    {
      name: 'store.segment-purge',
      kind: 'duration',
      default: '24h0m0s',
      help: 'purge deleted segment files after this long',
    },
    {
      name: 'store.query-concurrency',
      kind: 'int',
      default: 4,
      help: 'segment files a query reads ahead at once (beyond the batch being merged)',
    },
    {
      name: 'store.query-workers',
      kind: 'int',
      default: defaultScanWorkers(),
      help: 'threads that scan segment files for queries, ~20 MiB each (0: scan on the main thread)',
    },
    {
      name: 'store.query-memory',
      kind: 'int',
      default: DEFAULT_QUERY_MEMORY,
      help: 'read-ahead bytes all queries of this node hold at most, together (queries beyond it wait)',
    },
    {
      name: 'store.shutdown-grace',
      kind: 'duration',
      default: '10s',
      help: 'at shutdown, how long queries in progress may take to finish (new ones get 503)',
    },
    {
      name: 'ui.local',
      kind: 'bool',
      default: false,
      help: 'ignore embedded files and go straight to the filesystem',
    },
  ];
}

export interface StartStoreOptions {
  mode: string;
  flags: FlagValues;
  fs: FileSystem;
  logger: Logger;
  registry: Registry;
  peers: Peers;
  clusterState: () => unknown;
  now?: () => number;
  /** This process's ingest log (an ingeststore): its consumers read it without a socket. */
  localIngest?: LocalIngester;
}

export interface StoreHandle {
  routes: FastifyPluginAsync;
  stop(): Promise<void>;
  /**
   * Stops the segment consumers only (part of stop()). An ingeststore calls it before stopping
   * its ingest log, so that a batch in flight is committed or failed while the log still takes
   * commits: closing the log first hands the claims back, and the batch is stored twice.
   */
  stopConsumers(): Promise<void>;
  /**
   * Refuses new queries (503) and resolves once those in progress have ended, or when
   * -store.shutdown-grace has passed (part of stop(); the node calls it once the cluster knows it
   * is leaving, so that peers' node queries are not refused while they still route here).
   */
  drainQueries(): Promise<void>;
  log: StoreLog;
}

function intFlag(flags: FlagValues, name: string, min: number): number {
  const v = Number(flags[name]);
  if (!Number.isSafeInteger(v) || v < min)
    throw new InvalidArgumentError(
      `-${name} must be an integer ≥ ${min}, got ${JSON.stringify(flags[name])}`,
    );
  return v;
}

function durationFlag(flags: FlagValues, name: string, min: number): number {
  const raw = String(flags[name]);
  let ms: number;
  try {
    ms = parseDuration(raw);
  } catch {
    throw new InvalidArgumentError(`-${name}: invalid duration ${JSON.stringify(raw)}`);
  }
  if (ms < min) throw new InvalidArgumentError(`-${name} must be at least ${min} ms, got ${raw}`);
  return ms;
}

export async function startStore(opts: StartStoreOptions): Promise<StoreHandle> {
  const { flags, logger, registry } = opts;
  const now = opts.now ?? Date.now;
  const consumersN = intFlag(flags, 'store.segment-consumers', 0);
  const targetSize = intFlag(flags, 'store.segment-target-size', 1);
  const bufferSize = intFlag(flags, 'store.segment-buffer-size', 1);
  const replicationFactor = intFlag(flags, 'store.segment-replication-factor', 1);
  const queryConcurrency = intFlag(flags, 'store.query-concurrency', 1);
  const queryWorkers = intFlag(flags, 'store.query-workers', 0);
  const queryMemory = intFlag(flags, 'store.query-memory', 1 << 20);
  const targetAge = durationFlag(flags, 'store.segment-target-age', 0);
  const delay = durationFlag(flags, 'store.segment-delay', 1);
  const retainMs = durationFlag(flags, 'store.segment-retain', 1);
  const purgeMs = durationFlag(flags, 'store.segment-purge', 0);
  const shutdownGraceMs = durationFlag(flags, 'store.shutdown-grace', 0);

  // The consumer registers its metrics first; ours reuse the replicated_* ones it shares.
  const consumerMetrics = createConsumerMetrics(registry);
  const streamMetrics = createStreamMetrics(registry);
  const metrics = createStoreMetrics(registry);

  const log = await openStoreLog({ fs: opts.fs, root: String(flags['store.path']), logger, now, metrics });
  const streams = new StreamRegistry({ logger, metrics: streamMetrics });
  const fanout = new Fanout({ logger });
  // Scan workers for the real filesystem; started now so the first query does not wait for them.
  const pool = opts.fs.kind === 'real' && queryWorkers > 0 ? new ScanPool(logger, queryWorkers) : undefined;
  void pool?.prewarm();
  // Reading a new segment back for live streams is skipped while nobody is streaming; regex
  // subscribers are matched on the scan workers.
  const publisher = new SegmentPublisher(log, streams, logger, {
    wanted: () => streams.hasSubscribers(),
    pool,
  });
  const compactor = new Compactor({ log, logger, metrics, targetSize, retainMs, purgeMs, now, bufferSize });
  const onReplicated = (entry: SegmentEntry) => publisher.enqueue(entry);
  const queryGate = new QueryGate();
  // Calls the consumers would make to this very node skip the loopback socket (local-http.ts).
  const http = new LocalFirstHttp(new NodeConsumerHttp(), {
    self: () => opts.peers.selfApiAddr?.() ?? null,
    ingest: opts.localIngest,
    // The consumer validated every segment it merges: its own copy is not checked twice.
    replicate: replicaReceiver({ log, metrics, onReplicated }, true),
  });
  // One memo for the node: a poison segment is quarantined on its second failure, whichever of
  // the node's consumers saw the first.
  const memo = new FailureMemo(now);
  const consumers = Array.from(
    { length: consumersN },
    () =>
      new SegmentConsumer({
        peers: opts.peers,
        replicationFactor,
        targetSize,
        targetAge,
        delay,
        logger,
        metrics: consumerMetrics,
        now,
        // Segments that repeatedly fail to merge are set aside here (see quarantine.ts); the
        // store log reads only files directly in its directory.
        quarantine: { fs: opts.fs, dir: join(log.root, QUARANTINE_DIR) },
        memo,
        http,
      }),
  );
  compactor.start();
  for (const c of consumers) c.start();
  logger.info(
    { path: log.root, segments: log.stats().segments.count, consumers: consumersN, replicationFactor },
    'store started',
  );

  const routes: FastifyPluginAsync = async (app) => {
    await app.register(
      storeRoutes({
        log,
        peers: opts.peers,
        fanout,
        metrics,
        logger,
        clusterState: opts.clusterState,
        queryConcurrency,
        bufferSize,
        pool,
        queryMemory,
        onReplicated,
        queryGate,
      }),
    );
    await app.register(streamRoutes({ registry: streams, peers: opts.peers, logger }));
  };

  let draining: Promise<void> | null = null;
  const drainQueries = () => {
    draining ??= (async () => {
      const waiting = queryGate.active;
      if (waiting > 0) logger.info({ queries: waiting }, 'store: letting the queries in progress finish');
      const cut = await queryGate.close(shutdownGraceMs);
      if (cut > 0)
        logger.warn(
          { queries: cut, graceMs: shutdownGraceMs },
          'store: queries still running at the end of -store.shutdown-grace are cut',
        );
    })();
    return draining;
  };
  let consumersStopping: Promise<void> | null = null;
  const stopConsumers = () => {
    consumersStopping ??= (async () => {
      await Promise.all(
        consumers.map((c) => c.stop().catch((err: unknown) => logger.warn({ err }, 'consumer stop'))),
      );
      http.close();
    })();
    return consumersStopping;
  };
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      // OK Log's order: consumers fail what they hold, the compacter stops, streams close,
      // then the log waits for writes in flight and releases its LOCK.
      await stopConsumers();
      await compactor.stop();
      await streams.close().catch((err: unknown) => logger.warn({ err }, 'stream registry close'));
      await publisher.drain();
      await drainQueries();
      fanout.close();
      await pool?.close();
      await log.close();
    })();
    return stopping;
  };
  return { routes, stop, stopConsumers, drainQueries, log };
}
