// In-process tests of the forwarder's parts: line splitting, the bounded buffer, targets, backoff.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../../cli/forward/backoff.ts';
import { RecordBuffer } from '../../cli/forward/buffer.ts';
import { type Block, LineSplitter } from '../../cli/forward/line-splitter.ts';
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
