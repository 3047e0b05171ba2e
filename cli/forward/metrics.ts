// The forwarder's Prometheus metrics (OK Log's four names plus ours) on their own Registry, and
// the optional `-api` HTTP server with `/metrics` and `/health` (plain node:http: a forwarder
// needs two routes, not a framework).
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import { parseAddr } from '../../shared/addr.ts';

export class ForwardMetrics {
  readonly registry = new Registry();
  readonly bytes = new Counter({
    name: 'oklog_forward_bytes_total',
    help: 'Bytes forwarded (first sends; resends are counted separately).',
    registers: [this.registry],
  });
  readonly records = new Counter({
    name: 'oklog_forward_records_total',
    help: 'Records forwarded (first sends; resends are counted separately).',
    registers: [this.registry],
  });
  readonly disconnects = new Counter({
    name: 'oklog_forward_disconnects',
    help: 'Connections lost or requests failed while forwarding.',
    registers: [this.registry],
  });
  readonly shortWrites = new Counter({
    name: 'oklog_forward_short_writes',
    help: 'Short writes (kept for OK Log dashboards; Node writes whole buffers or fail, so always 0).',
    registers: [this.registry],
  });
  readonly dropped = new Counter({
    name: 'oklog_forward_dropped_records_total',
    help: 'Records dropped: reason=buffer_full (-on-full drop-oldest) or too_long (-max-record-size).',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly resent = new Counter({
    name: 'oklog_forward_resent_records_total',
    help: 'Records sent again after a failed write, a lost connection or an unacknowledged batch.',
    registers: [this.registry],
  });
  readonly ackedBatches = new Counter({
    name: 'oklog_forward_acked_batches_total',
    help: 'Batches acknowledged by an ingester (-ack mode).',
    registers: [this.registry],
  });
  readonly bufferedRecords: Gauge;
  readonly bufferedBytes: Gauge;

  constructor(buffered: () => { records: number; bytes: number } = () => ({ records: 0, bytes: 0 })) {
    this.bufferedRecords = new Gauge({
      name: 'oklog_forward_buffered_records',
      help: 'Records waiting in the buffer between stdin and the network.',
      registers: [this.registry],
      collect() {
        this.set(buffered().records);
      },
    });
    this.bufferedBytes = new Gauge({
      name: 'oklog_forward_buffered_bytes',
      help: 'Bytes waiting in the buffer between stdin and the network.',
      registers: [this.registry],
      collect() {
        this.set(buffered().bytes);
      },
    });
    // Start at zero so the series exist before the first drop.
    this.dropped.inc({ reason: 'buffer_full' }, 0);
    this.dropped.inc({ reason: 'too_long' }, 0);
  }
}

/** Serves `/metrics` and `/health` on `addr` (default port 7650); resolves once listening. */
export async function startApiServer(addr: string, metrics: ForwardMetrics): Promise<Server> {
  const a = parseAddr(addr, 7650);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/health') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end('OK\n');
    } else if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('404 page not found\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(a.port, a.host === '' ? undefined : a.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.unref();
  return server;
}
