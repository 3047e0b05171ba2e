// The ingest subsystem: flags (reference §1.4, §1.6), start-up (bind the three listeners, open the
// log with lock and recovery) and SIGTERM semantics (stop listening, flush what was read, close
// every segment, release the lock). See docs/INGEST.md for what each mode promises.
import type { Server, Socket } from 'node:net';
import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { describeError, InvalidArgumentError } from '../../shared/errors.ts';
import type { FlagSpec, FlagValues } from '../../shared/flags.ts';
import { DEFAULT_TOPIC, isValidTopic } from '../../shared/record.ts';
import { parseDuration } from '../../shared/time.ts';
import type { FileSystem } from '../fs/types.ts';
import { BulkConnection } from './bulk.ts';
import { IngestContext, type IngestSettings } from './context.ts';
import { AckedWriter } from './http-write.ts';
import type { TopicMode } from './line-reader.ts';
import { boundPort, ConnectionSet, closeServer, listen, StreamConnection } from './listeners.ts';
import { createIngestMetrics, type Modality } from './metrics.ts';
import { type IngestStats, ingestRoutes, ingestStats } from './routes.ts';
import { IngestLog } from './segment-log.ts';

export type { IngestStats } from './routes.ts';
export { IngestLog } from './segment-log.ts';

export type IngestMode = 'ingest' | 'ingeststore';

export interface ConnectionCounts {
  fast: number;
  durable: number;
  bulk: number;
}

export const DEFAULT_MAX_RECORD_SIZE = 1024 * 1024;
export const DEFAULT_MAX_WRITE_BODY = 64 * 1024 * 1024;

/** The topic flags are `-topic*` in `ingest` mode and `-ingest.topic*` in `ingeststore` (§1.6). */
function topicFlagNames(mode: IngestMode): { mode: string; topic: string } {
  return mode === 'ingest'
    ? { mode: 'topic-mode', topic: 'topic' }
    : { mode: 'ingest.topic-mode', topic: 'ingest.topic' };
}

export function ingestFlagSpecs(mode: IngestMode): FlagSpec[] {
  const t = topicFlagNames(mode);
  return [
    { name: t.mode, kind: 'string', default: 'static', help: 'static, dynamic' },
    {
      name: t.topic,
      kind: 'string',
      default: DEFAULT_TOPIC,
      help: 'topic of every record in static mode: [A-Za-z0-9][A-Za-z0-9_-]*',
    },
    {
      name: 'ingest.fast',
      kind: 'string',
      default: 'tcp://0.0.0.0:7651',
      help: 'listen address for fast (async) writes',
    },
    {
      name: 'ingest.durable',
      kind: 'string',
      default: 'tcp://0.0.0.0:7652',
      help: 'listen address for durable (group-committed fsync) writes',
    },
    {
      name: 'ingest.bulk',
      kind: 'string',
      default: 'tcp://0.0.0.0:7653',
      help: 'listen address for bulk uploads, acknowledged once stored',
    },
    {
      name: 'ingest.path',
      kind: 'string',
      default: 'data/ingest',
      help: 'path holding segment files for ingest tier',
    },
    {
      name: 'ingest.segment-flush-size',
      kind: 'int',
      default: 16777216,
      help: 'flush segments after they grow to this size (bytes)',
    },
    {
      name: 'ingest.segment-flush-age',
      kind: 'duration',
      default: '3s',
      help: 'flush segments this long after their first write',
    },
    {
      name: 'ingest.segment-pending-timeout',
      kind: 'duration',
      default: '1m0s',
      help: 'claimed but uncommitted segments are failed after this long',
    },
    {
      name: 'ingest.max-record-size',
      kind: 'int',
      default: DEFAULT_MAX_RECORD_SIZE,
      help: 'longest accepted line in bytes (newline excluded); longer lines are dropped',
    },
    {
      name: 'ingest.max-write-body',
      kind: 'int',
      default: DEFAULT_MAX_WRITE_BODY,
      help: 'largest POST /ingest/write body in bytes (413 beyond)',
    },
    {
      name: 'ingest.bulk-max-size',
      kind: 'int',
      default: DEFAULT_MAX_WRITE_BODY,
      help: 'largest bulk upload in stored bytes (ERR beyond)',
    },
    {
      name: 'ingest.bulk-ack-timeout',
      kind: 'duration',
      default: '5m0s',
      help: 'a bulk upload not committed by a store node this long after its half-close is answered ERR',
    },
  ];
}

function positiveInt(flags: FlagValues, name: string): number {
  const v = Number(flags[name]);
  if (!Number.isSafeInteger(v) || v <= 0)
    throw new InvalidArgumentError(`-${name} must be a positive integer, got ${JSON.stringify(flags[name])}`);
  return v;
}

function positiveDuration(flags: FlagValues, name: string): number {
  const ms = parseDuration(String(flags[name]));
  if (!(ms > 0))
    throw new InvalidArgumentError(
      `-${name} must be a positive duration, got ${JSON.stringify(flags[name])}`,
    );
  return ms;
}

/** Flag values → settings, with OK Log's start-up error messages (§1.4). */
export function ingestSettings(mode: IngestMode, flags: FlagValues): IngestSettings {
  const t = topicFlagNames(mode);
  const topicMode = String(flags[t.mode] ?? 'static').toLowerCase();
  if (topicMode !== 'static' && topicMode !== 'dynamic')
    throw new InvalidArgumentError(
      `topic mode ${JSON.stringify(String(flags[t.mode]))} invalid, must be "static" or "dynamic"`,
    );
  const topic = String(flags[t.topic] ?? DEFAULT_TOPIC);
  if (topicMode === 'static' && !isValidTopic(topic))
    throw new InvalidArgumentError(`topic name ${JSON.stringify(topic)} invalid`);
  return {
    topicMode: topicMode as TopicMode,
    topic,
    maxRecordSize: positiveInt(flags, 'ingest.max-record-size'),
    flushSize: positiveInt(flags, 'ingest.segment-flush-size'),
    flushAgeMs: positiveDuration(flags, 'ingest.segment-flush-age'),
    maxWriteBody: positiveInt(flags, 'ingest.max-write-body'),
    bulkMaxSize: positiveInt(flags, 'ingest.bulk-max-size'),
    bulkAckTimeoutMs: positiveDuration(flags, 'ingest.bulk-ack-timeout'),
  };
}

export interface StartIngestOptions {
  mode: IngestMode;
  flags: FlagValues;
  fs: FileSystem;
  logger: Logger;
  registry: Registry;
  clusterState: () => unknown;
  now?: () => number;
}

export interface IngestNode {
  routes: FastifyPluginAsync;
  stop(): Promise<void>;
  log: IngestLog;
  /** Ports actually bound (useful with port 0). */
  ports: ConnectionCounts;
  stats(): IngestStats;
}

export async function startIngest(opts: StartIngestOptions): Promise<IngestNode> {
  const { flags, logger } = opts;
  const now = opts.now ?? Date.now;
  const settings = ingestSettings(opts.mode, flags);
  const pendingTimeoutMs = positiveDuration(flags, 'ingest.segment-pending-timeout');
  let ready: { ctx: IngestContext; conns: ConnectionSet } | null = null;
  const early: { socket: Socket; modality: Modality }[] = [];
  let stopping = false;

  // Listeners are bound first, so a taken port fails start-up before the disk is touched (§1.9).
  // A connection accepted before the log is open waits, unread, until it is.
  const accept = (modality: Modality) => (socket: Socket) => {
    if (stopping) return void socket.destroy();
    if (!ready) return void early.push({ socket, modality });
    if (modality === 'bulk') new BulkConnection(socket, ready.ctx, ready.conns);
    else new StreamConnection(socket, modality, ready.ctx, ready.conns);
  };
  const servers: Server[] = [];
  const specs = [
    { flag: 'ingest.fast', modality: 'fast', port: 7651, allowHalfOpen: false },
    { flag: 'ingest.durable', modality: 'durable', port: 7652, allowHalfOpen: false },
    // Bulk clients half-close, then wait for the reply on the same connection.
    { flag: 'ingest.bulk', modality: 'bulk', port: 7653, allowHalfOpen: true },
  ] as const;
  try {
    for (const s of specs) {
      servers.push(
        await listen(
          {
            flag: s.flag,
            address: String(flags[s.flag]),
            defaultPort: s.port,
            allowHalfOpen: s.allowHalfOpen,
          },
          accept(s.modality),
        ),
      );
    }
  } catch (err) {
    await Promise.all(servers.map(closeServer));
    throw err;
  }

  const metrics = createIngestMetrics(opts.registry);
  let log: IngestLog;
  try {
    log = await IngestLog.open({
      fs: opts.fs,
      root: String(flags['ingest.path']),
      logger,
      metrics,
      pendingTimeoutMs,
      now,
    });
  } catch (err) {
    for (const e of early) e.socket.destroy();
    await Promise.all(servers.map(closeServer));
    throw err;
  }
  const ctx = new IngestContext(log, metrics, logger, settings, now);
  const conns = new ConnectionSet(metrics.connectedClients);
  ready = { ctx, conns };
  for (const e of early.splice(0)) if (!e.socket.destroyed) accept(e.modality)(e.socket);
  const acked = new AckedWriter(ctx);
  const ports = { fast: boundPort(servers[0]), durable: boundPort(servers[1]), bulk: boundPort(servers[2]) };
  logger.info({ ...ports, path: log.root, ...settings }, 'ingest listening');

  const deps = {
    ctx,
    acked,
    connections: () => conns.countsByModality(),
    clusterState: opts.clusterState,
  };
  let stopped: Promise<void> | null = null;
  const stop = () => {
    stopped ??= (async () => {
      stopping = true;
      // server.close() resolves only once every connection is gone, so close them meanwhile.
      const closing = Promise.all(servers.map(closeServer));
      await conns.shutdownAll();
      await closing;
      await acked.close().catch((err) => logger.error({ err }, 'closing acked writer failed'));
      await log.close();
      logger.info({ written: ctx.tally }, 'ingest stopped');
    })().catch((err) => {
      logger.error({ err }, `ingest shutdown failed: ${describeError(err)}`);
      throw err;
    });
    return stopped;
  };

  return {
    routes: ingestRoutes(deps),
    stop,
    log,
    ports,
    stats: () => ingestStats(deps),
  };
}
