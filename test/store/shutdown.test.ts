// A real `oklog store` stopping (SIGTERM) while a query is in progress: the query is let finish
// within -store.shutdown-grace, new ones are refused with 503, and one that outlasts the grace
// is cut without keeping the node from exiting.
import assert from 'node:assert/strict';
import { type IncomingMessage, request } from 'node:http';
import { test } from 'node:test';
import { tempDir, untilStorePeer, waitFor } from '../helpers/index.ts';
import { iso, records, replicate, startSegmentStore, T0 } from './helpers.ts';

const RECORDS = 200_000; // ~36 MiB: far more than the sockets between node and client buffer
const range = `from=${iso(T0)}&to=${iso(T0 + RECORDS)}`;

/**
 * Starts a GET of every record and pauses once the first bytes are in. With `stall`, the reader
 * also stops for `stall.ms` once only `stall.remaining` records are left: the node has then sent
 * the rest into the socket buffers, and its handler is done while the client has not read it all.
 */
function pausedQuery(url: string, stall?: { remaining: number; ms: number }) {
  let lines = 0;
  let tail = '';
  let stalled = false;
  let res: IncomingMessage | null = null;
  const started = new Promise<IncomingMessage>((resolve, reject) => {
    const req = request(`${url}/store/query?${range}`, (r) => {
      res = r;
      r.setEncoding('utf8');
      r.on('data', (d: string) => {
        const parts = (tail + d).split('\n');
        tail = parts.pop() ?? '';
        lines += parts.length;
        if (stall && !stalled && lines >= RECORDS - stall.remaining) {
          stalled = true;
          r.pause();
          setTimeout(() => r.resume(), stall.ms);
        }
      });
      r.once('data', () => {
        r.pause();
        resolve(r);
      });
    });
    req.on('error', reject);
    req.end();
  });
  const ended = started.then(
    (r) =>
      new Promise<{ complete: boolean; lines: number; matched: string | undefined }>((resolve) => {
        r.on('end', () =>
          resolve({ complete: r.complete, lines, matched: r.trailers['x-oklog-records-matched'] }),
        );
        r.on('error', () => resolve({ complete: false, lines, matched: undefined }));
        r.on('aborted', () => resolve({ complete: false, lines, matched: undefined }));
      }),
  );
  return { started, ended, resume: () => res?.resume(), status: () => res?.statusCode };
}

async function storeWithRecords(dir: string, extra: string[]) {
  const node = await startSegmentStore(dir, extra);
  try {
    await untilStorePeer(node.api);
    for (let i = 0; i < RECORDS; i += 50_000) {
      const body = records(T0 + i, 50_000, () => ` ${'x'.repeat(120)}`);
      assert.equal((await replicate(node.api, body)).status, 200);
    }
  } catch (err) {
    await node.proc.kill('SIGKILL');
    throw err;
  }
  return node;
}

test('SIGTERM lets a query in progress finish; new queries meanwhile get 503', async () => {
  const dir = await tempDir();
  const node = await storeWithRecords(dir.path, ['-store.shutdown-grace', '60s']);
  try {
    // The reader stalls near the end too: the node must wait until the last byte is flushed.
    const q = pausedQuery(node.api, { remaining: 30_000, ms: 1500 });
    await q.started;
    assert.equal(q.status(), 200);
    void node.proc.kill('SIGTERM');
    await waitFor(
      () => node.proc.stderr().includes('letting the queries in progress finish'),
      'the node to start draining',
    );
    const refused = await fetch(`${node.api}/store/query?${range}`);
    assert.equal(refused.status, 503, 'a new query is refused while the node stops');
    assert.match(await refused.text(), /shutting down/);
    assert.equal(node.proc.child.exitCode, null, 'the node waits for the query in progress');
    q.resume();
    const r = await q.ended;
    assert.ok(r.complete, 'the query in progress got its whole answer');
    assert.equal(r.lines, RECORDS);
    assert.equal(r.matched, String(RECORDS));
    assert.equal(await node.proc.exited, 0);
    assert.doesNotMatch(node.proc.stderr(), /are cut/);
  } finally {
    await node.proc.kill('SIGKILL');
    await dir.cleanup();
  }
});

test('a query outlasting -store.shutdown-grace is cut and the node still stops cleanly', async () => {
  const dir = await tempDir();
  const node = await storeWithRecords(dir.path, ['-store.shutdown-grace', '300ms']);
  try {
    const q = pausedQuery(node.api);
    await q.started;
    void node.proc.kill('SIGTERM');
    assert.equal(await node.proc.exited, 0, 'the node exits, its LOCK released');
    assert.match(node.proc.stderr(), /queries still running at the end of -store.shutdown-grace are cut/);
    q.resume();
    const r = await q.ended;
    assert.equal(r.complete, false, 'the paused query was cut');
    assert.ok(r.lines < RECORDS, `${r.lines} lines before the cut`);
  } finally {
    await node.proc.kill('SIGKILL');
    await dir.cleanup();
  }
});
