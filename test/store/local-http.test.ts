// LocalFirstHttp: calls addressed to this node reach the ingest log and the replicate handler
// in-process with the endpoints' answers; calls to any other node go to the HTTP client.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { RealFileSystem } from '../../node/fs/index.ts';
import { createIngestMetrics } from '../../node/ingest/metrics.ts';
import { IngestLog } from '../../node/ingest/segment-log.ts';
import { Aggregate } from '../../node/store/aggregate.ts';
import type { ConsumerHttp, HttpResponse } from '../../node/store/http-client.ts';
import { LocalFirstHttp, sizedIngester } from '../../node/store/local-http.ts';
import { createStoreMetrics } from '../../node/store/metrics.ts';
import { openStoreLog } from '../../node/store/recovery.ts';
import { TrustedRecords } from '../../node/store/replicate.ts';
import { replicaReceiver } from '../../node/store/routes.ts';
import { tempDir } from '../helpers/index.ts';
import { rec, T0, ulidAt } from './consumer-fakes.ts';

const silent = pino({ level: 'silent' });
const SELF = '127.0.0.1:7650';

/** Records every call it gets and answers 599, so a misrouted call is visible. */
class RecordingRemote implements ConsumerHttp {
  calls: string[] = [];
  private answer(what: string): Promise<HttpResponse> {
    this.calls.push(what);
    return Promise.resolve({ status: 599, body: Buffer.from('remote') });
  }
  control(method: 'GET' | 'POST', url: string) {
    return this.answer(`${method} ${url}`);
  }
  read(url: string) {
    return this.answer(`READ ${url}`);
  }
  async upload(url: string, body: AsyncIterable<Buffer>) {
    for await (const _ of body);
    return this.answer(`UPLOAD ${url}`);
  }
  closed = false;
  close() {
    this.closed = true;
  }
}

async function* chunks(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await tempDir('oklog-local-http-');
  const fs = new RealFileSystem();
  const ingest = await IngestLog.open({
    fs,
    root: join(dir.path, 'ingest'),
    logger: silent,
    metrics: createIngestMetrics(new Registry()),
    pendingTimeoutMs: 60_000,
  });
  const store = await openStoreLog({ fs, root: join(dir.path, 'store'), logger: silent });
  const metrics = createStoreMetrics(new Registry());
  const replicated: string[] = [];
  const remote = new RecordingRemote();
  let self: string | null = SELF;
  const http = new LocalFirstHttp(remote, {
    self: () => self,
    ingest,
    replicate: replicaReceiver({ log: store, metrics, onReplicated: (e) => replicated.push(e.low) }),
  });
  t.after(async () => {
    await ingest.close();
    await store.close();
    await dir.cleanup();
  });
  return { dir, ingest, store, remote, http, replicated, setSelf: (s: string | null) => (self = s) };
}

test('next / read / commit against this node use the ingest log, with the endpoint answers', async (t) => {
  const { ingest, remote, http, dir } = await setup(t);
  const body = rec(T0, 1, 'one') + rec(T0, 2, 'two');
  const seg = await ingest.create();
  await seg.file.write(Buffer.from(body));
  seg.firstWriteMs = seg.lastWriteMs = Date.now();
  await ingest.flush(seg, 'close');

  const next = await http.control('GET', `http://${SELF}/ingest/next`);
  assert.equal(next.status, 200);
  const id = next.body.toString();
  const read = await http.read(`http://${SELF}/ingest/read?id=${id}`, 1 << 20);
  assert.equal(read.status, 200);
  assert.equal(read.body.toString(), body);
  // A claim is read once, as over HTTP.
  const again = await http.read(`http://${SELF}/ingest/read?id=${id}`, 1 << 20);
  assert.notEqual(again.status, 200);
  // Too large for the caller's bound: an error, as the HTTP client's.
  const failed = await http.control('POST', `http://${SELF}/ingest/failed?id=${id}`);
  assert.deepEqual([failed.status, failed.body.toString()], [200, 'Failed OK']);
  const id2 = (await http.control('GET', `http://${SELF}/ingest/next`)).body.toString();
  await assert.rejects(http.read(`http://${SELF}/ingest/read?id=${id2}`, 10), {
    code: 'OKLOG_ERR_BODY_LENGTH',
  });
  assert.equal((await http.control('POST', `http://${SELF}/ingest/failed?id=${id2}`)).status, 200);
  const id3 = (await http.control('GET', `http://${SELF}/ingest/next`)).body.toString();
  assert.equal((await http.read(`http://${SELF}/ingest/read?id=${id3}`, 1 << 20)).status, 200);
  const commit = await http.control('POST', `http://${SELF}/ingest/commit?id=${id3}`);
  assert.deepEqual([commit.status, commit.body.toString()], [200, 'Commit OK']);
  // Nothing left: 404 as the endpoint; an unknown claim: 404 too.
  assert.equal((await http.control('GET', `http://${SELF}/ingest/next`)).status, 404);
  assert.equal((await http.control('POST', `http://${SELF}/ingest/commit?id=${id3}`)).status, 404);
  assert.deepEqual(await readdir(join(dir.path, 'ingest')), ['LOCK']);
  assert.deepEqual(remote.calls, []);
});

test('replicate to this node stores a validated segment; a bad body is 400 and stores nothing', async (t) => {
  const { remote, http, dir, replicated } = await setup(t);
  let sent = 0;
  const ok = await http.upload(
    `http://${SELF}/store/replicate`,
    chunks(rec(T0, 1, 'a').slice(0, 10), rec(T0, 1, 'a').slice(10), rec(T0, 2, 'b')),
    undefined,
    (n) => {
      sent += n;
    },
  );
  assert.deepEqual([ok.status, ok.body.toString()], [200, 'OK\n']);
  assert.equal(sent, (rec(T0, 1, 'a') + rec(T0, 2, 'b')).length);
  const files = (await readdir(join(dir.path, 'store'))).filter((f) => f.endsWith('.flushed'));
  assert.equal(files.length, 1);
  assert.equal(
    await readFile(join(dir.path, 'store', files[0]), 'latin1'),
    rec(T0, 1, 'a') + rec(T0, 2, 'b'),
  );
  assert.equal(replicated.length, 1);

  const bad = await http.upload(
    `http://${SELF}/store/replicate`,
    chunks(rec(T0, 9, 'late'), rec(T0, 3, 'early')),
  );
  assert.equal(bad.status, 400);
  assert.match(bad.body.toString(), /out of order/);
  const after = (await readdir(join(dir.path, 'store'))).filter((f) => !f.startsWith('LOCK'));
  assert.deepEqual(after, files);
  assert.deepEqual(remote.calls, []);
});

test('other nodes, unknown self, and other paths go to the HTTP client', async (t) => {
  const { remote, http, setSelf } = await setup(t);
  await http.control('GET', 'http://127.0.0.2:7650/ingest/next');
  await http.read('http://127.0.0.1:7651/ingest/read?id=x', 10);
  await http.upload('http://10.0.0.1:7650/store/replicate', chunks(rec(T0, 1, 'a')));
  await http.control('GET', `http://${SELF}/ingest/stats`);
  setSelf(null);
  await http.control('GET', `http://${SELF}/ingest/next`);
  assert.deepEqual(remote.calls, [
    'GET http://127.0.0.2:7650/ingest/next',
    'READ http://127.0.0.1:7651/ingest/read?id=x',
    'UPLOAD http://10.0.0.1:7650/store/replicate',
    `GET http://${SELF}/ingest/stats`,
    `GET http://${SELF}/ingest/next`,
  ]);
  http.close();
  assert.ok(remote.closed);
});

test('an aggregate of re-readable segments keeps no bytes and merges the same records as one of Buffers', async () => {
  const a = Buffer.from(rec(T0, 1, 'a1') + rec(T0, 3, 'a3') + rec(T0, 3, 'a3 again') + rec(T0, 5, 'a5'));
  const b = Buffer.from(rec(T0, 2, 'b2') + rec(T0, 3, 'b3 same ulid') + rec(T0, 9, 'b9'));
  const inMemory = new Aggregate();
  inMemory.add(a);
  inMemory.add(b);
  const opened: string[] = [];
  // Re-read in odd-sized pieces, so lines straddle chunks.
  const pieces = (name: string, buf: Buffer) =>
    async function* () {
      opened.push(name);
      for (let i = 0; i < buf.length; i += 7) yield buf.subarray(i, i + 7);
    };
  const streamed = new Aggregate();
  assert.equal(streamed.add(Buffer.from(a), pieces('a', a)), 4);
  assert.equal(streamed.add(Buffer.from(b), pieces('b', b)), 3);
  assert.deepEqual(opened, [], 'nothing re-read before the merge');
  assert.equal(streamed.firstUlid, inMemory.firstUlid);
  const all = async (g: AsyncIterable<Buffer>) => {
    const parts: Buffer[] = [];
    for await (const c of g) parts.push(c);
    return Buffer.concat(parts).toString('latin1');
  };
  const want = await all(inMemory.merged());
  assert.equal(want.split('\n').length - 1, 5, 'duplicate ULIDs dropped');
  assert.equal(await all(streamed.merged()), want);
  assert.equal(await all(streamed.merged()), want, 'every replica gets the same bytes');
  assert.deepEqual(opened, ['a', 'b', 'a', 'b']);

  // A source that ends inside a record fails the merge instead of sending a cut record.
  const cut = new Aggregate();
  cut.add(Buffer.from(a), async function* () {
    yield a.subarray(0, a.length - 3);
  });
  await assert.rejects(all(cut.merged()), { code: 'OKLOG_ERR_SEGMENT_REJECTED' });
});

test('disjoint segments are joined in ULID order without a merge; a duplicate inside one forces the merge', async () => {
  const all = async (g: AsyncIterable<Buffer>) => {
    const parts: Buffer[] = [];
    for await (const c of g) parts.push(c);
    return parts;
  };
  const early = Buffer.from(rec(T0, 1, 'e1') + rec(T0, 2, 'e2'));
  const late = Buffer.from(rec(T0, 3, 'l3') + rec(T0, 4, 'l4'));
  const agg = new Aggregate();
  agg.add(late);
  agg.add(early);
  const parts = await all(agg.merged());
  assert.equal(parts.length, 2);
  assert.equal(parts[0], early, 'the segment itself, not a copy');
  assert.equal(parts[1], late);

  const dup = Buffer.from(rec(T0, 5, 'd5') + rec(T0, 5, 'd5 again') + rec(T0, 6, 'd6'));
  const withDup = new Aggregate();
  withDup.add(early);
  withDup.add(dup);
  const text = Buffer.concat(await all(withDup.merged())).toString('latin1');
  assert.equal(text, rec(T0, 1, 'e1') + rec(T0, 2, 'e2') + rec(T0, 5, 'd5') + rec(T0, 6, 'd6'));

  // Touching at one ULID (last of one = first of the next) is an overlap: merged, deduplicated.
  const touching = new Aggregate();
  touching.add(Buffer.from(rec(T0, 1, 'x') + rec(T0, 2, 'y')));
  touching.add(Buffer.from(rec(T0, 2, 'y copy') + rec(T0, 3, 'z')));
  const t2 = Buffer.concat(await all(touching.merged())).toString('latin1');
  assert.equal(t2, rec(T0, 1, 'x') + rec(T0, 2, 'y') + rec(T0, 3, 'z'));
});

test('TrustedRecords counts whole-line chunks and notes the first and last ULIDs; a cut chunk is refused', () => {
  const t = new TrustedRecords();
  t.push(Buffer.from(rec(T0, 1, 'a') + rec(T0, 2, 'b')));
  t.push(Buffer.from(rec(T0, 3, 'c')));
  t.end();
  assert.deepEqual([t.records, t.low, t.high], [3, ulidAt(T0, 1), ulidAt(T0, 3)]);
  assert.equal(t.bytes, (rec(T0, 1, 'a') + rec(T0, 2, 'b') + rec(T0, 3, 'c')).length);
  assert.throws(() => t.push(Buffer.from(rec(T0, 4, 'd').slice(0, 20))), { status: 400 });
});

test('a sized ingest log: a claim too large is found by its file size, never read whole, and can be spilled', async (t) => {
  const { ingest, dir, store } = await setup(t);
  const fs = new RealFileSystem();
  const body = Array.from({ length: 50 }, (_, i) => rec(T0 + i, 0, `record ${i}`)).join('');
  for (let k = 0; k < 2; k++) {
    const seg = await ingest.create();
    await seg.file.write(Buffer.from(body));
    seg.firstWriteMs = seg.lastWriteMs = Date.now();
    await ingest.flush(seg, 'close');
  }
  // Counts whole reads, so the test can tell the size came from the file, not from reading it.
  const sized = sizedIngester(ingest, fs);
  let readAlls = 0;
  const counting = {
    ...sized,
    readAll: (id: string) => {
      readAlls++;
      return sized.readAll(id);
    },
  };
  const remote = new RecordingRemote();
  const http = new LocalFirstHttp(remote, {
    self: () => SELF,
    ingest: counting,
    replicate: replicaReceiver({ log: store, metrics: createStoreMetrics(new Registry()) }),
  });
  const id = (await http.control('GET', `http://${SELF}/ingest/next`)).body.toString();
  await assert.rejects(http.read(`http://${SELF}/ingest/read?id=${id}`, 100), (err: unknown) => {
    const e = err as { code: string; context: { size: number } };
    assert.deepEqual([e.code, e.context.size], ['OKLOG_ERR_SEGMENT_TOO_LARGE', body.length]);
    return true;
  });
  assert.equal(readAlls, 0, 'not read into memory');
  assert.equal((await http.control('POST', `http://${SELF}/ingest/failed?id=${id}`)).status, 200);
  // Spilled: streamed into the sink, and the claim counts as read (it can be committed).
  const id2 = (await http.control('GET', `http://${SELF}/ingest/next`)).body.toString();
  const got: Buffer[] = [];
  const r = await http.read(`http://${SELF}/ingest/read?id=${id2}`, 100, undefined, async (size) => {
    assert.equal(size, body.length);
    return {
      write: async (c: Buffer) => {
        got.push(Buffer.from(c));
      },
    };
  });
  assert.deepEqual([r.status, r.spilled, r.body.length], [200, body.length, 0]);
  assert.equal(Buffer.concat(got).toString(), body);
  assert.equal((await http.control('POST', `http://${SELF}/ingest/commit?id=${id2}`)).status, 200);
  // Within the bound: read whole, as before.
  const id3 = (await http.control('GET', `http://${SELF}/ingest/next`)).body.toString();
  const whole = await http.read(`http://${SELF}/ingest/read?id=${id3}`, 1 << 20);
  assert.equal(whole.body.toString(), body);
  assert.equal(readAlls, 1);
  assert.equal((await http.control('POST', `http://${SELF}/ingest/commit?id=${id3}`)).status, 200);
  assert.deepEqual(await readdir(join(dir.path, 'ingest')), ['LOCK']);
  assert.deepEqual(remote.calls, []);
});
