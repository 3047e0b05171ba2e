// `oklogctl stats`: from any one node, discover the cluster and show per ingest node its
// connections and active/flushed/pending segments (the consumer lag), per store node its
// segments, bytes, oldest/newest record and trash, and whether every store node answered.
// Exit 0 when every node answered, 3 when some did not (what the others said is still shown),
// 1 when the cluster could not be reached at all.
import { describeError } from '../../shared/errors.ts';
import {
  commonFlags,
  discoverPeers,
  getJson,
  type Io,
  type Peer,
  parseCommon,
  processIo,
  table,
} from './peers.ts';

export const EXIT_PARTIAL = 3;

interface CountBytes {
  count: number;
  bytes: number;
}

export interface IngestStats {
  segments: { active: CountBytes; flushed: CountBytes; pending: CountBytes };
  connections: { fast: number; durable: number; bulk: number };
  written: { records: number; bytes: number };
}

export interface StoreStats {
  segments: CountBytes;
  trashed: CountBytes;
  oldestRecord: string | null;
  newestRecord: string | null;
}

export interface NodeResult<T> {
  name: string;
  type: Peer['type'];
  apiAddr: string;
  ok: boolean;
  error?: string;
  stats?: T;
}

export interface ClusterStats {
  peers: number;
  ingest: NodeResult<IngestStats>[];
  store: NodeResult<StoreStats>[];
  /** Every store node answered its stats. */
  allStoreNodesAnswered: boolean;
  allIngestNodesAnswered: boolean;
}

const isIngest = (p: Peer) => p.type === 'ingest' || p.type === 'ingeststore';
const isStore = (p: Peer) => p.type === 'store' || p.type === 'ingeststore';

async function collect<T>(peers: Peer[], path: string, timeoutMs: number): Promise<NodeResult<T>[]> {
  return Promise.all(
    peers.map(async (p) => {
      const base = { name: p.name, type: p.type, apiAddr: p.apiAddr };
      try {
        const stats = (await getJson(`http://${p.apiAddr}${path}`, timeoutMs)) as T;
        if (typeof stats !== 'object' || stats === null) throw new Error('unexpected response');
        return { ...base, ok: true, stats };
      } catch (err) {
        return { ...base, ok: false, error: describeError(err) };
      }
    }),
  );
}

export async function clusterStats(base: string, timeoutMs: number): Promise<ClusterStats> {
  const peers = await discoverPeers(base, timeoutMs);
  const [ingest, store] = await Promise.all([
    collect<IngestStats>(peers.filter(isIngest), '/ingest/stats', timeoutMs),
    collect<StoreStats>(peers.filter(isStore), '/store/stats', timeoutMs),
  ]);
  return {
    peers: peers.length,
    ingest,
    store,
    allStoreNodesAnswered: store.every((s) => s.ok),
    allIngestNodesAnswered: ingest.every((s) => s.ok),
  };
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n: unknown): string {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? String(v) : '-');
const cb = (v: CountBytes | undefined) => (v ? `${num(v.count)} / ${formatBytes(v.bytes)}` : '-');

function render(s: ClusterStats): string {
  let out = `INGEST NODES (${s.ingest.length})\n`;
  out += table(
    ['NAME', 'API', 'CONNS F/D/B', 'ACTIVE', 'FLUSHED', 'PENDING', 'WRITTEN', 'STATUS'],
    s.ingest.map((n) => {
      const st = n.stats;
      const c = st?.connections;
      return [
        n.name,
        n.apiAddr,
        c ? `${num(c.fast)}/${num(c.durable)}/${num(c.bulk)}` : '-',
        cb(st?.segments?.active),
        cb(st?.segments?.flushed),
        cb(st?.segments?.pending),
        st?.written ? `${num(st.written.records)} / ${formatBytes(st.written.bytes)}` : '-',
        n.ok ? 'ok' : `ERROR: ${n.error}`,
      ];
    }),
  );
  out += `\nSTORE NODES (${s.store.length})\n`;
  out += table(
    ['NAME', 'API', 'SEGMENTS', 'TRASHED', 'OLDEST', 'NEWEST', 'STATUS'],
    s.store.map((n) => [
      n.name,
      n.apiAddr,
      cb(n.stats?.segments),
      cb(n.stats?.trashed),
      n.stats?.oldestRecord ?? '-',
      n.stats?.newestRecord ?? '-',
      n.ok ? 'ok' : `ERROR: ${n.error}`,
    ]),
  );
  const answered = s.store.filter((n) => n.ok).length;
  out += `\nstore nodes answered: ${answered}/${s.store.length}${s.allStoreNodesAnswered ? '' : ' (INCOMPLETE)'}\n`;
  return out;
}

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const command = 'oklogctl stats';
  const c = parseCommon(command, commonFlags(), argv, io);
  if (typeof c === 'number') return c;
  let s: ClusterStats;
  try {
    s = await clusterStats(c.base, c.timeoutMs);
  } catch (err) {
    io.stderr.write(`${command}: ${describeError(err)}\n`);
    return 1;
  }
  io.stdout.write(c.json ? `${JSON.stringify(s, null, 2)}\n` : render(s));
  const missing = [...s.store, ...s.ingest].filter((n) => !n.ok);
  for (const n of missing)
    io.stderr.write(`${command}: ${n.type} node ${n.name} (${n.apiAddr}) did not answer: ${n.error}\n`);
  return missing.length > 0 ? EXIT_PARTIAL : 0;
}
