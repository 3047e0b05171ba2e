// Test fixtures for the store: records with chosen times, in-process store nodes on free ports.
import pino from 'pino';
import { Registry } from 'prom-client';
import { buildApiServer } from '../../node/api/index.ts';
import { type PeerInfo, StaticPeers } from '../../node/cluster/peers.ts';
import { type FileSystem, RealFileSystem } from '../../node/fs/index.ts';
import { Fanout } from '../../node/store/fanout.ts';
import { createStoreMetrics, type StoreMetrics } from '../../node/store/metrics.ts';
import type { QueryParams } from '../../node/store/query-params.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { storeRoutes } from '../../node/store/routes.ts';
import { ScanPool } from '../../node/store/scan-pool.ts';
import type { StoreLog } from '../../node/store/store-log.ts';
import { encodeTime } from '../../shared/ulid.ts';
import { startOklog, tempDir } from '../helpers/index.ts';

export const silent = pino({ level: 'silent' });

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** A canonical ULID for millisecond `ms` whose entropy encodes `n` (so ULIDs sort by (ms, n)). */
export function ulidAt(ms: number, n = 0): string {
  const b = Buffer.alloc(26, 0x30);
  encodeTime(ms, b, 0);
  let v = n;
  for (let i = 25; i >= 10 && v > 0; i--) {
    b[i] = ALPHABET.charCodeAt(v % 32);
    v = Math.floor(v / 32);
  }
  return b.toString('latin1');
}

export function line(ms: number, n: number, text: string, topic = 'default'): string {
  return `${ulidAt(ms, n)} ${topic} ${text}\n`;
}

/** `count` records from `startMs`, one per ms, text `rec <i>` (plus `extra(i)`). */
export function records(startMs: number, count: number, extra: (i: number) => string = () => ''): string {
  let s = '';
  for (let i = 0; i < count; i++) s += line(startMs + i, 0, `rec ${i}${extra(i)}`);
  return s;
}

export const T0 = Date.UTC(2024, 0, 1, 0, 0, 0);

/** A query bound as the user writes it (RFC 3339). */
export const iso = (ms: number) => new Date(ms).toISOString();

/** QueryParams of a plain-term query over [fromMs, toMs] as parseQuery would produce them. */
export function plainQuery(fromMs: number, toMs: number, q: string): QueryParams {
  return {
    from: ulidAt(fromMs),
    to: ulidAt(toMs),
    fromText: '',
    toText: '',
    q,
    regex: false,
    topic: undefined,
    limit: null,
  };
}

export interface TestNode {
  url: string;
  addr: string;
  log: StoreLog;
  metrics: StoreMetrics;
  registry: Registry;
  dir: string;
  close(): Promise<void>;
}

/**
 * An in-process store node (store log + /store routes on a fastify server on a free port).
 * `peers` is called per request so tests can wire several nodes together.
 */
export async function startTestNode(
  opts: {
    peers?: () => string[];
    fs?: FileSystem;
    now?: () => number;
    queryConcurrency?: number;
    /** An existing store directory (left in place on close). */
    root?: string;
    /** Scan on worker threads (default true). */
    workers?: boolean;
    splitBytes?: number;
  } = {},
): Promise<TestNode> {
  const dir = opts.root ? { path: opts.root, cleanup: async () => {} } : await tempDir('oklog-store-');
  const registry = new Registry();
  const fs = opts.fs ?? new RealFileSystem();
  const log = await openStoreLog({ fs, root: dir.path, logger: silent, now: opts.now });
  const metrics = createStoreMetrics(registry);
  const fanout = new Fanout({ logger: silent, headerTimeoutMs: 3000 });
  const pool = opts.workers === false ? undefined : new ScanPool(silent, 2);
  await pool?.prewarm();
  let self = '';
  const peers = {
    current: () => (opts.peers ? opts.peers() : [self]),
    members: () => [] as PeerInfo[],
  };
  const app = await buildApiServer({
    logger: silent,
    registry,
    plugins: [
      storeRoutes({
        log,
        peers,
        fanout,
        metrics,
        logger: silent,
        clusterState: () => ({ self }),
        queryConcurrency: opts.queryConcurrency ?? 4,
        bufferSize: 1 << 20,
        pool,
        splitBytes: opts.splitBytes,
      }),
    ],
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const a = app.server.address();
  const port = typeof a === 'object' && a ? a.port : 0;
  self = `127.0.0.1:${port}`;
  return {
    url: `http://${self}`,
    addr: self,
    log,
    metrics,
    registry,
    dir: dir.path,
    close: async () => {
      await app.close();
      fanout.close();
      await pool?.close();
      await log.close();
      await dir.cleanup();
    },
  };
}

export { StaticPeers };

export async function replicate(
  url: string,
  body: string | Buffer,
): Promise<{ status: number; text: string }> {
  const r = await fetch(`${url}/store/replicate`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/binary' },
    body: typeof body === 'string' ? body : new Uint8Array(body),
  });
  return { status: r.status, text: await r.text() };
}

export async function query(
  url: string,
  params: Record<string, string>,
  method: 'GET' | 'HEAD' = 'GET',
  path = '/store/query',
): Promise<{ status: number; headers: Headers; body: string; lines: string[] }> {
  const qs = new URLSearchParams(params).toString();
  const r = await fetch(`${url}${path}?${qs}`, { method });
  const body = await r.text();
  return { status: r.status, headers: r.headers, body, lines: body === '' ? [] : body.trimEnd().split('\n') };
}

/** Flags of an `oklog store` serving the segments written into `dir`: no consumers, replication factor 1. */
export function segmentStoreFlags(dir: string): string[] {
  return ['-store.path', dir, '-store.segment-consumers', '0', '-store.segment-replication-factor', '1'];
}

/**
 * A real `oklog store` process serving the segments written into `dir` beforehand (segmentStoreFlags),
 * with nothing old enough to expire and two scan workers.
 */
export function startSegmentStore(dir: string, extra: string[] = []) {
  const flags = [...segmentStoreFlags(dir), '-store.segment-retain', '1000000h', '-store.query-workers', '2'];
  return startOklog('store', [...flags, ...extra]);
}
