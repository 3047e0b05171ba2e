// The forwarder's senders in-process, over real loopback sockets, with a resolver the test
// controls: a `+dns` name is resolved again for every new connection, by the senders themselves,
// not only by resolveTarget. Two servers on the same port of 127.0.0.1 and 127.0.0.2 stand for an
// ingester whose DNS name moved.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, test } from 'node:test';
import { AckSender } from '../../cli/forward/ack-sender.ts';
import { Backoff } from '../../cli/forward/backoff.ts';
import { RecordBuffer } from '../../cli/forward/buffer.ts';
import { ForwardMetrics } from '../../cli/forward/metrics.ts';
import { parseTarget, type Resolver, TargetRing } from '../../cli/forward/targets.ts';
import { TcpSender } from '../../cli/forward/tcp-sender.ts';
import { freePort, sleep, waitFor } from '../helpers/index.ts';
import { lineNumbers, numberedLines, TcpSink } from './helpers.ts';

const closers: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of closers) await c().catch(() => {});
});

/** A resolver whose answer the test moves; counts lookups. */
function movingResolver(initial: string) {
  const r = { ip: initial, lookups: 0 };
  const resolver: Resolver = {
    async lookup() {
      r.lookups++;
      return [r.ip];
    },
    resolveSrv: async () => [],
    reverse: async () => [],
  };
  return { r, resolver };
}

const quietLog = { debug() {}, info() {}, warn() {}, error() {} };

function newBuffer() {
  return new RecordBuffer({ maxRecords: Number.POSITIVE_INFINITY, maxBytes: 64 << 20, onFull: 'block' });
}

test('TcpSender: a +dns name is resolved again on reconnect; the connection follows it', async () => {
  const port = await freePort();
  const a = await TcpSink.start(port, '127.0.0.1');
  const b = await TcpSink.start(port, '127.0.0.2');
  closers.push(
    () => a.close(),
    () => b.close(),
  );
  const { r, resolver } = movingResolver('127.0.0.1');
  const buffer = newBuffer();
  const sender = new TcpSender({
    targets: new TargetRing([parseTarget(`tcp+dns://ingest.test:${port}`, 7651, 'tcp')], resolver),
    buffer,
    log: quietLog,
    metrics: new ForwardMetrics(),
    backoff: new Backoff(1, 20),
    resendWindowBytes: 1 << 20,
    resendWindowMs: 0,
  });
  const running = sender.run();
  buffer.push({ data: numberedLines(1000), records: 1000 });
  await waitFor(() => a.lines().length >= 1000, 'first records at 127.0.0.1');
  assert.equal(r.lookups, 1);
  // The name moves, and the old address goes away.
  r.ip = '127.0.0.2';
  await a.close();
  buffer.push({ data: numberedLines(1000, 'payload', 1001), records: 1000 });
  buffer.end();
  assert.equal(await running, 'done');
  assert.ok(r.lookups >= 2, `resolved again: ${r.lookups}`);
  const atB = new Set(lineNumbers(b.lines()));
  for (let i = 1; i <= 2000; i++) assert.ok(atB.has(i), `record ${i} at the new address`);
});

/** An `/ingest/write` that acknowledges and records what it got. */
async function ackServer(host: string, port: number) {
  const got: string[] = [];
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const body = Buffer.concat(parts).toString();
      got.push(body);
      res.writeHead(200).end(JSON.stringify({ records: body.split('\n').length - 1, bytes: body.length }));
    });
  });
  await new Promise<void>((res) => server.listen(port, host, () => res()));
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise((res) => server.close(res));
  });
  return { server, got };
}

test('AckSender: resolves for every new connection (not once), and not for a reused one', async () => {
  const port = await freePort();
  const a = await ackServer('127.0.0.1', port);
  const b = await ackServer('127.0.0.2', port);
  const { r, resolver } = movingResolver('127.0.0.1');
  const buffer = newBuffer();
  const sender = new AckSender({
    targets: new TargetRing([parseTarget(`tcp+dns://ingest.test:${port}`, 7650, 'http')], resolver),
    buffer,
    log: quietLog,
    metrics: new ForwardMetrics(),
    backoff: new Backoff(1, 20),
    batchBytes: 1 << 20,
    batchRecords: 1000,
    batchWaitMs: 0,
    timeoutMs: 5000,
    topic: '',
  });
  const running = sender.run();
  buffer.push({ data: Buffer.from('one\n'), records: 1 });
  await waitFor(() => a.got.length === 1, 'first batch acknowledged');
  buffer.push({ data: Buffer.from('two\n'), records: 1 });
  await waitFor(() => a.got.length === 2, 'second batch acknowledged');
  assert.equal(r.lookups, 1, 'the keep-alive connection was reused: no new lookup');
  // The name moves; the old ingester closes its idle keep-alive connection (as servers do).
  r.ip = '127.0.0.2';
  a.server.closeIdleConnections();
  await sleep(50); // let the client see the close (a reuse that fails would be retried anyway)
  buffer.push({ data: Buffer.from('three\n'), records: 1 });
  buffer.end();
  assert.equal(await running, 'done');
  assert.equal(r.lookups, 2, 'the reconnect resolved the name again');
  assert.deepEqual(a.got, ['one\n', 'two\n']);
  assert.deepEqual(b.got, ['three\n'], 'the new connection went to the new address');
});
