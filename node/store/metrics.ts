// The store's Prometheus metrics (reference §10), registered on the node's registry. Metrics the
// consumer also uses (`oklog_store_replicated_*{direction}`) are shared: whoever registers first
// creates them, the other reuses them.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface StoreMetrics {
  compactDuration: Histogram<'kind' | 'compacted' | 'result'>;
  trashedSegments: Counter<'success'>;
  purgedSegments: Counter<'success'>;
  replicatedSegments: Counter<'direction'>;
  replicatedBytes: Counter<'direction'>;
  replicateRejected: Counter;
  queries: Counter<'kind' | 'result'>;
  /** Segments rewritten because they held lines that are not records (StoreLog.repair). */
  repairedSegments: Counter<'result'>;
  /** Lines set aside into `.bad` files (recovery and repair). */
  badLines: Counter;
  /** Set-aside files (`*.bad`, `quarantine/*`) deleted after retain + purge. */
  sweptFiles: Counter<'kind'>;
  /** Lines that are not records, skipped by query scans (they never match). */
  queryMalformedLines: Counter;
  /** Queries refused (503) because too many were waiting for read-ahead memory. */
  queryBusy: Counter;
  /** Read-ahead bytes leased by queries now, and queries waiting for some. */
  queryMemoryBytes: Gauge;
  queryMemoryWaiting: Gauge;
}

function shared<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

export function createStoreMetrics(registry: Registry): StoreMetrics {
  const registers = [registry];
  return {
    compactDuration: shared(
      registry,
      'oklog_store_compact_duration_seconds',
      () =>
        new Histogram({
          name: 'oklog_store_compact_duration_seconds',
          help: 'Duration of each compaction in seconds.',
          labelNames: ['kind', 'compacted', 'result'],
          buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
          registers,
        }),
    ),
    trashedSegments: shared(
      registry,
      'oklog_store_trashed_segments',
      () =>
        new Counter({
          name: 'oklog_store_trashed_segments',
          help: 'Segments moved to trash.',
          labelNames: ['success'],
          registers,
        }),
    ),
    purgedSegments: shared(
      registry,
      'oklog_store_purged_segments',
      () =>
        new Counter({
          name: 'oklog_store_purged_segments',
          help: 'Segments purged from trash.',
          labelNames: ['success'],
          registers,
        }),
    ),
    replicatedSegments: shared(
      registry,
      'oklog_store_replicated_segments',
      () =>
        new Counter({
          name: 'oklog_store_replicated_segments',
          help: 'Segments replicated, by direction i.e. ingress or egress.',
          labelNames: ['direction'],
          registers,
        }),
    ),
    replicatedBytes: shared(
      registry,
      'oklog_store_replicated_bytes',
      () =>
        new Counter({
          name: 'oklog_store_replicated_bytes',
          help: 'Segments replicated, by direction i.e. ingress or egress, in bytes.',
          labelNames: ['direction'],
          registers,
        }),
    ),
    replicateRejected: shared(
      registry,
      'oklog_store_replicate_rejected_total',
      () =>
        new Counter({
          name: 'oklog_store_replicate_rejected_total',
          help: 'Replication requests rejected because the body was not valid sorted records.',
          registers,
        }),
    ),
    queries: shared(
      registry,
      'oklog_store_queries_total',
      () =>
        new Counter({
          name: 'oklog_store_queries_total',
          help: 'Queries answered, by kind (query = fan-out, node = _query) and result.',
          labelNames: ['kind', 'result'],
          registers,
        }),
    ),
    repairedSegments: shared(
      registry,
      'oklog_store_repaired_segments_total',
      () =>
        new Counter({
          name: 'oklog_store_repaired_segments_total',
          help: 'Segments rewritten because they held lines that are not records, by result (OK, Error).',
          labelNames: ['result'],
          registers,
        }),
    ),
    badLines: shared(
      registry,
      'oklog_store_bad_lines_total',
      () =>
        new Counter({
          name: 'oklog_store_bad_lines_total',
          help: 'Lines that are not records, set aside into .bad files by recovery and repair.',
          registers,
        }),
    ),
    sweptFiles: shared(
      registry,
      'oklog_store_swept_files_total',
      () =>
        new Counter({
          name: 'oklog_store_swept_files_total',
          help: 'Set-aside files deleted after retain + purge, by kind (bad, quarantine).',
          labelNames: ['kind'],
          registers,
        }),
    ),
    queryMalformedLines: shared(
      registry,
      'oklog_store_query_malformed_lines_total',
      () =>
        new Counter({
          name: 'oklog_store_query_malformed_lines_total',
          help: 'Lines in segment files that are not records (no ULID and space), skipped by queries.',
          registers,
        }),
    ),
    queryBusy: shared(
      registry,
      'oklog_store_query_busy_total',
      () =>
        new Counter({
          name: 'oklog_store_query_busy_total',
          help: 'Queries refused with 503 because too many were waiting for read-ahead memory.',
          registers,
        }),
    ),
    queryMemoryBytes: shared(
      registry,
      'oklog_store_query_memory_bytes',
      () =>
        new Gauge({
          name: 'oklog_store_query_memory_bytes',
          help: 'Read-ahead bytes leased by running queries (bounded by -store.query-memory, plus a reserve).',
          registers,
        }),
    ),
    queryMemoryWaiting: shared(
      registry,
      'oklog_store_query_memory_waiting',
      () =>
        new Gauge({
          name: 'oklog_store_query_memory_waiting',
          help: 'Queries waiting for read-ahead memory before they start scanning.',
          registers,
        }),
    ),
  };
}
