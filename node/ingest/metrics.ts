// The ingest tier's Prometheus metrics (reference §10), registered on the node's registry (never
// the global one, so tests can run several nodes in one process). Every metric here is updated
// somewhere — OK Log registered `flushes_total` and never touched it.
import { Counter, exponentialBuckets, Gauge, Histogram, type Registry } from 'prom-client';

export type Modality = 'fast' | 'durable' | 'bulk';
export type FlushReason = 'size' | 'age' | 'close';
/** Why records did not reach a segment. */
export type DropReason = 'too_large' | 'invalid_topic' | 'truncated' | 'write_error';

export interface IngestMetrics {
  connectedClients: Gauge<'modality'>;
  bytesWritten: Counter;
  recordsWritten: Counter;
  syncs: Counter;
  flushes: Counter<'reason'>;
  flushAge: Histogram;
  flushSize: Histogram;
  failedSegments: Counter;
  committedSegments: Counter;
  committedBytes: Counter;
  recordsDropped: Counter<'reason'>;
  writerErrors: Counter<'op'>;
  bulkResults: Counter<'result'>;
  ackedWrites: Counter<'code'>;
}

export function createIngestMetrics(registry: Registry): IngestMetrics {
  const registers = [registry];
  const m: IngestMetrics = {
    connectedClients: new Gauge({
      name: 'oklog_connected_clients',
      help: 'Number of currently connected clients by modality.',
      labelNames: ['modality'],
      registers,
    }),
    bytesWritten: new Counter({
      name: 'oklog_ingest_writer_bytes_written_total',
      help: 'The total number of bytes written to ingest segments.',
      registers,
    }),
    recordsWritten: new Counter({
      name: 'oklog_ingest_writer_records_written_total',
      help: 'The total number of records written to ingest segments.',
      registers,
    }),
    syncs: new Counter({
      name: 'oklog_ingest_writer_syncs_total',
      help: 'The number of times an active segment is explicitly fsynced.',
      registers,
    }),
    flushes: new Counter({
      name: 'oklog_ingest_writer_flushes_total',
      help: 'The number of active segments flushed, by reason (size, age, close).',
      labelNames: ['reason'],
      registers,
    }),
    flushAge: new Histogram({
      name: 'oklog_ingest_segment_flush_age_seconds',
      help: 'Age of segment when flushed, from its first write.',
      registers,
    }),
    flushSize: new Histogram({
      name: 'oklog_ingest_segment_flush_size_bytes',
      help: 'Size of active segment when flushed.',
      buckets: exponentialBuckets(2 ** 14, 2, 11), // 16 KiB … 16 MiB
      registers,
    }),
    failedSegments: new Counter({
      name: 'oklog_ingest_failed_segments',
      help: 'Segments failed back to flushed (by /failed or the pending timeout).',
      registers,
    }),
    committedSegments: new Counter({
      name: 'oklog_ingest_committed_segments',
      help: 'Segments successfully committed.',
      registers,
    }),
    committedBytes: new Counter({
      name: 'oklog_ingest_committed_bytes',
      help: 'Bytes of segments successfully committed.',
      registers,
    }),
    recordsDropped: new Counter({
      name: 'oklog_ingest_records_dropped_total',
      help: 'Records that never reached a segment, by reason (too_large, invalid_topic, truncated, write_error).',
      labelNames: ['reason'],
      registers,
    }),
    writerErrors: new Counter({
      name: 'oklog_ingest_writer_errors_total',
      help: 'Segment file operations that failed (create, write, sync, flush); the connection is closed.',
      labelNames: ['op'],
      registers,
    }),
    bulkResults: new Counter({
      name: 'oklog_ingest_bulk_results_total',
      help: 'Bulk uploads answered, by result (ok, err).',
      labelNames: ['result'],
      registers,
    }),
    ackedWrites: new Counter({
      name: 'oklog_ingest_acked_writes_total',
      help: 'POST /ingest/write requests answered, by HTTP status code.',
      labelNames: ['code'],
      registers,
    }),
  };
  // Present from the start at 0, so dashboards see every modality before the first client.
  for (const modality of ['fast', 'durable', 'bulk'] as const) m.connectedClients.set({ modality }, 0);
  return m;
}
