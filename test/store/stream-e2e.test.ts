// End to end with a real `oklog ingeststore` process: records written to the fast port go through
// the ingest log, the segment consumer and /store/replicate; they are queryable, and a live
// /store/stream opened beforehand sees each new record exactly once.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { after, test } from 'node:test';
import { type Proc, startIngeststore, tempDir, untilStorePeer, waitFor } from '../helpers/index.ts';
import { iso } from './helpers.ts';

let proc: Proc | null = null;
let cleanup: (() => Promise<void>) | null = null;
after(async () => {
  await proc?.kill('SIGKILL');
  await cleanup?.();
});

function openStream(url: string) {
  const chunks: Buffer[] = [];
  const req = request(url);
  /** 'end' for a clean end of the response, 'cut' for a connection closed without one. */
  let ended: (how: 'end' | 'cut') => void = () => {};
  const end = new Promise<'end' | 'cut'>((resolve) => {
    ended = resolve;
  });
  const headers = new Promise<number>((resolve, reject) => {
    req.once('error', reject);
    req.once('response', (res) => {
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('error', () => ended('cut'));
      res.on('end', () => ended('end'));
      res.on('close', () => ended(res.complete ? 'end' : 'cut'));
      resolve(res.statusCode ?? 0);
    });
  });
  req.on('error', () => {});
  req.end();
  return {
    headers,
    lines: () => Buffer.concat(chunks).toString().split('\n').filter(Boolean),
    end,
    close: () => req.destroy(),
  };
}

test('ingeststore: fast-port records become queryable and stream once', async () => {
  const dir = await tempDir('oklog-e2e-stream-');
  cleanup = dir.cleanup;
  const node = await startIngeststore(dir.path, '300ms', '500ms');
  proc = node.proc;
  const start = Date.now() - 1000;
  // The node must know itself as a store peer (gossip state) before streams and queries fan out.
  await untilStorePeer(node.api);

  const stream = openStream(`${node.api}/store/stream?q=e2e&window=300ms`);
  assert.equal(await stream.headers, 200, 'headers arrive before any record');
  await waitFor(async () => {
    const m = await (await fetch(`${node.api}/metrics`)).text();
    return /^oklog_store_stream_subscribers 1$/m.test(m);
  }, 'stream subscribed');

  const n = 500;
  const sock = connect(node.ports.fast, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  let body = '';
  for (let i = 0; i < n; i++) body += `e2e record ${i}\nnoise ${i}\n`;
  sock.end(body);

  const query = `${node.api}/store/query?from=${iso(start)}&to=${iso(Date.now() + 60_000)}&q=e2e`;
  const queried = (await waitFor(
    async () => {
      const lines = (await (await fetch(query)).text()).split('\n').filter(Boolean);
      return lines.length >= n ? lines : undefined;
    },
    'records queryable',
    20_000,
    200,
  )) as string[];
  assert.equal(queried.length, n);
  assert.deepEqual(
    queried.map((l) => l.slice(27)),
    Array.from({ length: n }, (_, i) => `default e2e record ${i}`),
  );

  await waitFor(() => stream.lines().length >= n, 'records streamed', 10_000);
  await new Promise((r) => setTimeout(r, 800)); // longer than the window: late copies would show
  const streamed = stream.lines();
  assert.equal(streamed.length, n, 'each record streamed once');
  assert.deepEqual(streamed, queried, 'the same records, in the same order');
  // A node shutting down ends the open stream cleanly (a crash would cut it).
  assert.equal(await node.proc.kill('SIGTERM'), 0);
  proc = null;
  assert.equal(await stream.end, 'end');
});
