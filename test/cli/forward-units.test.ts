// In-process tests of the forwarder's parts: line splitting, the bounded buffer, targets, backoff.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../../cli/forward/backoff.ts';
import { RecordBuffer } from '../../cli/forward/buffer.ts';
import { type Block, LineSplitter } from '../../cli/forward/line-splitter.ts';
import { autoWindowBytes, ResendWindow } from '../../cli/forward/resend-window.ts';
import { Retrying } from '../../cli/forward/retrying.ts';
import { parseTarget, type Resolver, resolveTarget, TargetRing } from '../../cli/forward/targets.ts';

function splitAll(input: Buffer, chunkSizes: number[], opts: { prefix?: string; max?: number } = {}) {
  const s = new LineSplitter({
    prefix: Buffer.from(opts.prefix ?? ''),
    maxRecordSize: opts.max ?? 1 << 20,
  });
  const blocks: Block[] = [];
  let pos = 0;
  let i = 0;
  while (pos < input.length) {
    const n = chunkSizes[i++ % chunkSizes.length];
    const b = s.push(input.subarray(pos, pos + n));
    if (b) blocks.push(b);
    pos += n;
  }
  const tail = s.end();
  if (tail) blocks.push(tail);
  const data = Buffer.concat(blocks.map((b) => b.data));
  const records = blocks.reduce((n, b) => n + b.records, 0);
  return { data, records, dropped: s.droppedTooLong };
}

test('splitter: bytes untouched, CRLF → LF, last line without newline, any chunking', () => {
  const bin = Buffer.from([0, 1, 2, 0x25, 0x64, 0xff, 0xfe, 0x0d, 0x41, 0x0d]);
  const input = Buffer.concat([Buffer.from('100% done %s %d\r\n\n\r\n'), bin, Buffer.from('\nlast')]);
  const expected = Buffer.concat([
    Buffer.from('100% done %s %d\n\n\n'),
    bin.subarray(0, bin.length - 1),
    Buffer.from('\nlast\n'),
  ]);
  for (const sizes of [[1], [2, 3], [7], [1000], [5, 1, 9]]) {
    const r = splitAll(input, sizes);
    assert.deepEqual(r.data, expected, `chunks ${sizes}`);
    assert.equal(r.records, 5);
  }
});

test('splitter: prefix on every record; zero-copy without prefix', () => {
  const r = splitAll(Buffer.from('a\nb\r\nc'), [2], { prefix: 'x y ' });
  assert.equal(r.data.toString(), 'x y a\nx y b\nx y c\n');
  const s = new LineSplitter({ maxRecordSize: 100 });
  const chunk = Buffer.from('one\ntwo\nthr');
  const b = s.push(chunk)!;
  assert.equal(b.data.buffer, chunk.buffer, 'a view of the input, not a copy');
  assert.equal(b.records, 2);
  // The next chunk completes the carried line: that line is its own small block, the rest a view.
  const next = Buffer.from('ee\nfour\nfive\nsi');
  const parts = s.split(next);
  assert.deepEqual(
    parts.map((p) => [p.data.toString(), p.records]),
    [
      ['three\n', 1],
      ['four\nfive\n', 2],
    ],
  );
  assert.equal(parts[1].data.buffer, next.buffer, 'the rest is a view too');
});

test('splitter: over-long lines are dropped and counted, across chunks too', () => {
  const long = 'z'.repeat(50);
  const input = Buffer.from(`ok1\n${long}\nok2\n${long}\r\n${'q'.repeat(10)}\r\nend-${long}`);
  for (const sizes of [[3], [1000], [7, 13]]) {
    const r = splitAll(input, sizes, { max: 10 });
    assert.equal(r.data.toString(), `ok1\nok2\n${'q'.repeat(10)}\n`, `chunks ${sizes}`);
    assert.equal(r.dropped, 3);
  }
});

test('splitter: -max-record-size counts the prefix (what the ingester receives)', () => {
  // "ab " + 7 bytes = 10: kept; "ab " + 8 = 11: dropped, as an ingester with the same limit would.
  const input = Buffer.from(`${'x'.repeat(7)}\n${'y'.repeat(8)}\nok\n${'z'.repeat(8)}`);
  for (const sizes of [[1], [4], [1000]]) {
    const r = splitAll(input, sizes, { prefix: 'ab ', max: 10 });
    assert.equal(r.data.toString(), `ab ${'x'.repeat(7)}\nab ok\n`, `chunks ${sizes}`);
    assert.equal(r.dropped, 2);
  }
});

test('splitter: abandon() discards the torn last line a signal cut off', () => {
  const s = new LineSplitter({ maxRecordSize: 100 });
  assert.equal(s.push(Buffer.from('whole\nhalf-writ'))!.data.toString(), 'whole\n');
  assert.equal(s.abandon(), 9);
  assert.equal(s.end(), null, 'nothing left to send');
});

const entry = (bytes: number, records = 1, resent = false) => ({
  parts: [Buffer.alloc(bytes, 0x61)],
  bytes,
  records,
  resent,
});

test('window: old entries expire by age, but not once a backpressured write pinned them', () => {
  const w = new ResendWindow({ maxBytes: 1 << 20, maxAgeMs: 1000 });
  w.add(entry(10), 0, false);
  w.add(entry(10), 100, false);
  w.trim(1050);
  assert.equal(w.records, 1, 'the first is older than the age');
  w.trim(1200);
  assert.equal(w.records, 0, 'an idle window empties by age');

  // Backpressure: the ingester is not keeping up, so nothing written so far may expire by age.
  w.add(entry(10), 0, false);
  w.add(entry(10), 10, true);
  w.add(entry(10), 20, false);
  w.trim(60_000);
  assert.equal(w.records, 3, 'pinned by the backpressured write: age does not apply');
  // ...only the byte bound pushes them out, then age applies to what came after.
  const b = new ResendWindow({ maxBytes: 30, maxAgeMs: 1000 });
  b.add(entry(10), 0, true);
  b.add(entry(10), 1, false);
  b.add(entry(10), 2, false);
  b.add(entry(10), 3, false);
  assert.equal(b.records, 3, 'at least 30 bytes kept; the pinned one left by bytes');
  b.trim(5000);
  assert.equal(b.records, 0, 'the unpinned rest by age');

  const end = new ResendWindow({ maxBytes: 1 << 20, maxAgeMs: 1000 });
  end.add(entry(10), 0, false);
  end.pinAll();
  end.trim(60_000);
  assert.equal(end.records, 1, 'after pinAll (end of input) nothing expires by age');

  const noAge = new ResendWindow({ maxBytes: 1 << 20, maxAgeMs: 0 });
  noAge.add(entry(10), 0, false);
  noAge.trim(1e9);
  assert.equal(noAge.records, 1, 'age 0: bytes only');
});

test('window: the byte bound keeps at least maxBytes of the newest writes', () => {
  const w = new ResendWindow({ maxBytes: 100, maxAgeMs: 0 });
  for (let i = 0; i < 50; i++) w.add(entry(30), i, false);
  assert.ok(w.bytes >= 100 && w.bytes < 130, `${w.bytes}`);
  const { again } = w.drain(100);
  assert.equal(again.length, 4);
});

test('window: too many small entries are coalesced, never dropped; order and bytes kept', () => {
  const w = new ResendWindow({ maxBytes: 1 << 30, maxAgeMs: 0, maxEntries: 100 });
  const lines: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    const l = `r${i}\n`;
    lines.push(l);
    w.add({ parts: [Buffer.from(l)], bytes: l.length, records: 1, resent: false }, i, i === 19_000);
    assert.ok(w.size <= 101, `bounded count: ${w.size}`);
  }
  assert.equal(w.records, 20_000);
  assert.ok(w.pinnedEntries > 0, 'the pin survives coalescing');
  const { again, skippedRecords } = w.drain(1e9);
  assert.equal(skippedRecords, 0);
  assert.equal(Buffer.concat(again.flatMap((e) => e.parts)).toString(), lines.join(''));
  assert.equal(
    again.reduce((n, e) => n + e.records, 0),
    20_000,
  );
  assert.ok(again.every((e) => e.resent));
});

test('window: an entry is re-sent from a window at most once (the skip is counted)', () => {
  const w = new ResendWindow({ maxBytes: 1 << 20, maxAgeMs: 0 });
  w.add(entry(10, 3, true), 0, false);
  w.add(entry(10, 2, false), 0, false);
  const { again, skippedRecords } = w.drain(0);
  assert.equal(skippedRecords, 3);
  assert.deepEqual(
    again.map((e) => [e.records, e.resent]),
    [[2, true]],
  );
  assert.equal(w.records, 0);
});

test('window: auto size covers the socket buffers, within 16 MiB..256 MiB', () => {
  assert.equal(autoWindowBytes(1), 16 << 20);
  assert.equal(autoWindowBytes(40 << 20), 40 << 20);
  assert.equal(autoWindowBytes(2 ** 40), 256 << 20);
});

test('retrying: one warning naming every failing ingester, at most every 10 s; give-up clock', () => {
  const lines: string[] = [];
  let now = 0;
  const log = {
    debug() {},
    info: (m: string) => lines.push(`info ${m}`),
    warn: (m: string, f?: Record<string, unknown>) => lines.push(`warn ${m} ${String(f?.ingesters)}`),
    error() {},
  };
  const r = new Retrying({ log, targets: 2, giveUpMs: 5000, message: 'down', now: () => now });
  r.failure('a', new Error('refused'));
  assert.equal(lines.length, 0, 'one of two failing is a failover, not news');
  r.failure('b', new Error('timeout'));
  assert.deepEqual(lines, ['warn down a: refused; b: timeout']);
  for (now = 100; now < 9000; now += 1000) r.failure('a', new Error('refused'));
  assert.equal(lines.length, 1, 'rate-limited');
  assert.equal(r.expired, true, 'failing for more than 5 s');
  assert.match(
    r.gaveUp('no ingester reachable', 7).message,
    /gave up after 5s .*; 7 record\(s\) not delivered/,
  );
  now = 10_500;
  r.failure('b', new Error('timeout'));
  assert.equal(lines.length, 2);
  r.success('a');
  assert.equal(lines.at(-1), 'info ingester reachable again');
  assert.equal(r.expired, false);
  assert.equal(r.capSleep(1000), 1000);
});

function block(lines: string[]): Block {
  return { data: Buffer.from(lines.map((l) => `${l}\n`).join('')), records: lines.length };
}

test('buffer: take joins blocks, splits at record boundaries, respects limits', () => {
  const b = new RecordBuffer({ maxRecords: 100, maxBytes: 1000, onFull: 'block' });
  b.push(block(['aa', 'bb', 'cc']));
  b.push(block(['dd']));
  assert.equal(b.take(100)!.data.toString(), 'aa\nbb\ncc\ndd\n');
  b.push(block(['aa', 'bb', 'cc']));
  assert.equal(b.take(7)!.data.toString(), 'aa\nbb\n');
  assert.equal(b.take(100, 1)!.data.toString(), 'cc\n');
  assert.equal(b.take(100), null);
  b.push(block(['a-very-long-record']));
  assert.equal(b.take(3)!.records, 1, 'one record even if larger than the limit');
});

test('buffer: block mode reports full; drop-oldest keeps the newest and counts', async () => {
  const blk = new RecordBuffer({ maxRecords: 3, maxBytes: 1000, onFull: 'block' });
  assert.equal(blk.push(block(['1', '2'])), true);
  assert.equal(blk.push(block(['3', '4'])), false);
  assert.equal(blk.records, 4, 'nothing dropped in block mode');
  let room = false;
  blk.waitForRoom().then(() => {
    room = true;
  });
  blk.take(100, 2);
  await Promise.resolve();
  assert.equal(room, true);

  const d = new RecordBuffer({ maxRecords: 3, maxBytes: 1000, onFull: 'drop-oldest' });
  d.push(block(['1', '2']));
  d.push(block(['3', '4', '5', '6']));
  assert.equal(d.dropped, 3);
  assert.equal(d.take(100)!.data.toString(), '4\n5\n6\n');
  const bytes = new RecordBuffer({ maxRecords: Infinity, maxBytes: 6, onFull: 'drop-oldest' });
  bytes.push(block(['aa', 'bb', 'cc', 'dd']));
  assert.equal(bytes.dropped, 2);
  assert.equal(bytes.take(100)!.data.toString(), 'cc\ndd\n');
});

test('targets: OK Log forms, bare host:port, default ports, errors', () => {
  assert.deepEqual(parseTarget('localhost', 7651, 'tcp'), {
    raw: 'localhost',
    proto: 'tcp',
    resolution: 'none',
    host: 'localhost',
    port: 7651,
    family: 0,
  });
  assert.equal(parseTarget('127.0.0.1:9', 7651, 'tcp').port, 9);
  assert.equal(parseTarget('tcp://[::1]:9', 7651, 'tcp').host, '::1');
  assert.equal(parseTarget('tcp+dns://logs:9', 7651, 'tcp').resolution, 'dns');
  assert.equal(parseTarget('tcp+dnssrv://_oklog._tcp.logs', 7651, 'tcp').resolution, 'dnssrv');
  assert.equal(parseTarget('tcp4://h', 7651, 'tcp').family, 4);
  assert.equal(parseTarget('https://h', 7650, 'http').proto, 'https');
  assert.equal(parseTarget('h', 7650, 'http').port, 7650);
  assert.throws(() => parseTarget('udp://h:1', 7651, 'tcp'), /unsupported protocol/);
  assert.throws(() => parseTarget('tcp+dnsx://h', 7651, 'tcp'), /unknown resolver/);
  assert.throws(() => parseTarget('h:99999', 7651, 'tcp'), /out of range/);
});

test('targets: names are resolved on every call; SRV target and port are used', async () => {
  let lookups = 0;
  const resolver: Resolver = {
    async lookup() {
      lookups++;
      return [`10.0.0.${lookups}`];
    },
    async resolveSrv() {
      return [
        { name: 'backup.', port: 1, priority: 20, weight: 100 },
        { name: 'ing-a.example.', port: 17651, priority: 10, weight: 0 },
      ];
    },
    async reverse() {
      return ['ptr.example'];
    },
  };
  const dnsTarget = parseTarget('tcp+dns://logs:9', 7651, 'tcp');
  assert.deepEqual(await resolveTarget(dnsTarget, resolver), { host: '10.0.0.1', port: 9, family: 0 });
  assert.deepEqual(await resolveTarget(dnsTarget, resolver), { host: '10.0.0.2', port: 9, family: 0 });
  const srv = await resolveTarget(parseTarget('tcp+dnssrv://_oklog._tcp.logs', 7651, 'tcp'), resolver);
  assert.deepEqual(srv, { host: 'ing-a.example', port: 17651, family: 0 });
  const ptr = await resolveTarget(parseTarget('tcp+dnsaddr://10.1.2.3:5', 7651, 'tcp'), resolver);
  assert.deepEqual(ptr, { host: 'ptr.example', port: 5, family: 0 });
  const failing: Resolver = { ...resolver, lookup: async () => Promise.reject(new Error('ENOTFOUND x')) };
  await assert.rejects(resolveTarget(dnsTarget, failing), /resolving logs: ENOTFOUND/);

  const ring = new TargetRing(['a', 'b', 'c'].map((h) => parseTarget(h, 1, 'tcp')));
  const seen = new Set<string>();
  for (let i = 0; i < 3; i++) {
    seen.add(ring.current.host);
    ring.rotate();
  }
  assert.deepEqual([...seen].sort(), ['a', 'b', 'c']);
});

test('backoff: 16 ms doubling to ~1 s, jittered, reset after success', () => {
  const b = new Backoff(16, 1024, () => 1);
  const seq = Array.from({ length: 9 }, () => b.next());
  assert.deepEqual(seq, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024]);
  b.reset();
  assert.equal(b.next(), 16);
  const j = new Backoff(16, 1024, () => 0);
  assert.equal(j.next(), 8, 'jitter takes up to half off');
});
