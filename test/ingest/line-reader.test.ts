import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FrameBufferPool } from '../../node/ingest/buffer-pool.ts';
import { type FramerOptions, LineFramer, stampUlids } from '../../node/ingest/line-reader.ts';
import { UlidGenerator } from '../../shared/ulid.ts';

function framer(opts: Partial<FramerOptions> = {}): LineFramer {
  return new LineFramer({
    topicMode: 'static',
    topic: 'default',
    maxRecordSize: 1024,
    ulids: new UlidGenerator({ now: () => 1_700_000_000_000 }),
    ...opts,
  });
}

/** Frames `chunks` (then a clean end) and returns the records without their ULIDs. */
function frameAll(f: LineFramer, chunks: (string | Buffer)[], end = true, pool?: FrameBufferPool) {
  let text = '';
  let tooLarge = 0;
  let invalidTopic = false;
  for (const c of chunks) {
    const r = f.push(Buffer.isBuffer(c) ? c : Buffer.from(c, 'latin1'));
    if (r.buf) text += r.buf.toString('latin1');
    if (r.buf) pool?.give([r.buf]); // read: the next push may reuse it
    tooLarge += r.tooLarge;
    invalidTopic ||= r.invalidTopic;
  }
  if (end) {
    const r = f.end();
    if (r.buf) text += r.buf.toString('latin1');
    tooLarge += r.tooLarge;
  }
  const lines = text === '' ? [] : text.slice(0, -1).split('\n');
  assert.ok(text === '' || text.endsWith('\n'));
  const ulids = lines.map((l) => l.slice(0, 26));
  for (const l of lines) assert.match(l, /^[0-9A-HJKMNP-TV-Z]{26} /);
  for (let i = 1; i < ulids.length; i++) assert.ok(ulids[i] > ulids[i - 1], 'ULIDs increase');
  return { records: lines.map((l) => l.slice(27)), tooLarge, invalidTopic };
}

test('static mode prefixes ULID and topic; empty lines and CR are kept as received', () => {
  const r = frameAll(framer(), ['a\n\nb\r\nc\r\n']);
  assert.deepEqual(r.records, ['default a', 'default ', 'default b\r', 'default c\r']);
});

test('lines split across chunks are joined, byte for byte', () => {
  const r = frameAll(framer({ topic: 't1' }), ['hel', 'lo wo', 'rld\nsec', 'ond\n', 'x', '\n']);
  assert.deepEqual(r.records, ['t1 hello world', 't1 second', 't1 x']);
});

test('a final line without newline is kept at a clean end, dropped by discard()', () => {
  assert.deepEqual(frameAll(framer(), ['a\nlast']).records, ['default a', 'default last']);
  const f = framer();
  assert.deepEqual(frameAll(f, ['a\ncut'], false).records, ['default a']);
  assert.equal(f.discard(), 1);
  assert.equal(f.end().buf, null);
});

test('payload bytes are not re-encoded (invalid UTF-8, NUL, high bytes)', () => {
  const payload = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x41]);
  const f = framer();
  const r = f.push(Buffer.concat([payload, Buffer.from('\n')]));
  assert.ok(r.buf);
  assert.deepEqual(r.buf.subarray(27 + 8, -1), payload);
});

test('oversized lines are dropped, counted once, and framing resumes at the next newline', () => {
  const big = 'x'.repeat(100);
  const f = framer({ maxRecordSize: 10 });
  // In one chunk, spread over chunks, and held back as a partial line.
  const r = frameAll(f, [`ok1\n${big}\nok2\n`, big.slice(0, 50), big.slice(50), '\nok3\n', 'y'.repeat(11)]);
  assert.deepEqual(r.records, ['default ok1', 'default ok2', 'default ok3']);
  assert.equal(r.tooLarge, 3);
  // Exactly the limit is fine.
  assert.deepEqual(frameAll(framer({ maxRecordSize: 3 }), ['abc\nabcd\n']).records, ['default abc']);
});

test('memory stays bounded: an endless line is never buffered', () => {
  const f = framer({ maxRecordSize: 1000 });
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let tooLarge = 0;
  for (let i = 0; i < 200; i++) {
    tooLarge += f.push(chunk).tooLarge;
    assert.ok(f.pendingBytes <= 1000);
  }
  assert.equal(tooLarge, 1);
  const r = f.push(Buffer.from('\nnext\n'));
  assert.equal(r.records, 1);
});

test('dynamic mode keeps the line as is and stops at the first line without a valid topic', () => {
  const f = framer({ topicMode: 'dynamic' });
  let r = frameAll(f, ['app1 hello\nApp-2_x  two spaces\n'], false);
  assert.deepEqual(r.records, ['app1 hello', 'App-2_x  two spaces']);
  for (const bad of ['\n', 'notopic\n', '-bad x\n', ' leading\n', 'bad!topic x\n']) {
    const g = framer({ topicMode: 'dynamic' });
    r = frameAll(g, [`ok x\n${bad}after x\n`], false);
    assert.deepEqual(r.records, ['ok x'], JSON.stringify(bad));
    assert.ok(r.invalidTopic);
    assert.ok(g.failed);
    assert.equal(g.push(Buffer.from('more x\n')).records, 0, 'nothing after the bad line');
  }
});

test('without a generator, ULID placeholders are reported and stamped later in order', () => {
  const f = framer({ ulids: null });
  const a = f.push(Buffer.from('one\ntwo\n'));
  const b = f.end();
  assert.equal(b.buf, null);
  assert.ok(a.buf && a.ulidOffsets);
  assert.deepEqual(a.ulidOffsets, [0, 27 + 8 + 4]);
  const gen = new UlidGenerator();
  stampUlids(a.buf, a.ulidOffsets, gen);
  const lines = a.buf.toString().trimEnd().split('\n');
  assert.match(lines[0], /^[0-9A-HJKMNP-TV-Z]{26} default one$/);
  assert.ok(lines[1].slice(0, 26) > lines[0].slice(0, 26));
});

test('a chunk with thousands of lines grows the newline index', () => {
  const f = framer();
  const r = f.push(Buffer.from('\n'.repeat(5000)));
  assert.equal(r.records, 5000);
  assert.equal(r.buf?.length, 5000 * (27 + 8 + 1));
});

test('random lines in random chunks frame exactly as a line-by-line reference, in both topic modes', () => {
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let round = 0; round < 40; round++) {
    const dynamic = round % 2 === 1;
    const max = 60;
    const lines: string[] = [];
    for (let i = 0; i < 300; i++) {
      const len = rand(10) === 0 ? max + 1 + rand(100) : rand(max - 8); // some too long
      let s = dynamic ? `t${rand(3)} ` : '';
      while (s.length < len) s += String.fromCharCode(0x20 + rand(0x5f));
      lines.push(s);
    }
    const input = Buffer.from(`${lines.join('\n')}\n`, 'latin1');
    const chunks: Buffer[] = [];
    for (let p = 0; p < input.length; ) {
      const n = 1 + rand(rand(4) === 0 ? 400 : 40);
      chunks.push(input.subarray(p, p + n));
      p += n;
    }
    // Every other round of each mode reuses a small pool's buffers (some chunks frame larger).
    const pool = round % 4 >= 2 ? new FrameBufferPool(128, 2) : undefined;
    const f = framer({ topicMode: dynamic ? 'dynamic' : 'static', maxRecordSize: max, pool });
    const got = frameAll(f, chunks, true, pool);
    const want = lines.filter((l) => l.length <= max).map((l) => (dynamic ? l : `default ${l}`));
    assert.deepEqual(got.records, want, `round ${round}`);
    assert.equal(got.tooLarge, lines.length - want.length);
  }
});

test('FrameBufferPool: lends, takes back only its own buffers once, keeps a bounded number', () => {
  const pool = new FrameBufferPool(1024, 2);
  const small = pool.take(100); // under half the pooled size: a buffer of its own, never kept
  assert.equal(small.length, 100);
  pool.give([small]);
  const a = pool.take(600);
  assert.equal(a.length, 1024);
  assert.notEqual(a.buffer, small.buffer);
  pool.give([a.subarray(0, 600)]); // a view of it is enough
  const again = pool.take(1000);
  assert.equal(again.buffer, a.buffer, 'a given-back buffer is lent again');
  pool.give([again, again]); // twice: taken back once
  const b = pool.take(512);
  const c = pool.take(512);
  assert.equal(b.buffer, a.buffer);
  assert.notEqual(c.buffer, a.buffer, 'a buffer is never lent to two holders');
  pool.give([Buffer.alloc(1024)]); // not from the pool: ignored
  assert.notEqual(pool.take(512).buffer, c.buffer);
  const big = pool.take(4096); // larger than the pool's buffers: a fresh one, never kept
  assert.equal(big.length, 4096);
  pool.give([big, b, c]);
  const kept = new Set([pool.take(700).buffer, pool.take(700).buffer, pool.take(700).buffer]);
  assert.ok(!kept.has(big.buffer));
  assert.ok(kept.has(b.buffer) && kept.has(c.buffer));
});
