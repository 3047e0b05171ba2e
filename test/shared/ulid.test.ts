import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  isCanonicalUlidAt,
  MAX_ULID,
  maxUlidAt,
  minUlidAt,
  parseUlid,
  UlidGenerator,
  ulidTime,
  ZERO_ULID,
} from '../../shared/ulid.ts';

test('generated ULIDs are 26 upper-case Crockford chars and encode the time', () => {
  const g = new UlidGenerator({ now: () => 1_700_000_000_123 });
  const id = g.next();
  assert.match(id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.equal(ulidTime(id), 1_700_000_000_123);
  assert.equal(parseUlid(id), id);
});

test('ULIDs strictly increase within a generator, in one millisecond and when the clock steps back', () => {
  let t = 1_700_000_000_000;
  const times = [t, t, t, t - 5, t - 5, t + 1];
  let i = 0;
  const g = new UlidGenerator({ now: () => times[Math.min(i++, times.length - 1)] });
  let prev = '';
  for (let n = 0; n < 20_000; n++) {
    const id = g.next();
    assert.ok(id > prev, `${id} > ${prev}`);
    prev = id;
  }
  t += 1;
});

test('the counter carries into the upper half instead of repeating', () => {
  // random() = 0xffffffff for prefix and the top half: top bit masked, low half starts at 0.
  const g = new UlidGenerator({ now: () => 1000, random: () => 0xffffffff });
  const a = g.next();
  const b = g.next();
  assert.ok(b > a);
});

test('ULIDs match the known encoding of oklog/ulid', () => {
  // 01ARZ3NDEKTSV4RRFFQ69G5FAV is the canonical example: time 1469922850259.
  assert.equal(ulidTime('01ARZ3NDEKTSV4RRFFQ69G5FAV'), 1469922850259);
  assert.equal(minUlidAt(1469922850259), '01ARZ3NDEK0000000000000000');
  assert.equal(maxUlidAt(1469922850259), '01ARZ3NDEKZZZZZZZZZZZZZZZZ');
});

test('strict parsing rejects invalid characters, wrong lengths and overflow; accepts lower case', () => {
  for (const bad of [
    '01ARZ3NDEKTSV4RRFFQ69G5FAU',
    '01ARZ3NDEKTSV4RRFFQ69G5FAI',
    '01ARZ3NDEKTSV4RRFFQ69G5FA',
    '2018-01-01T00:00:00.12345Z',
    '81ARZ3NDEKTSV4RRFFQ69G5FAV',
    '',
  ]) {
    assert.throws(() => parseUlid(bad), { code: 'OKLOG_ERR_INVALID_ULID' }, bad);
  }
  assert.equal(parseUlid('01arz3ndektsv4rrffq69g5fav'), '01ARZ3NDEKTSV4RRFFQ69G5FAV');
  assert.equal(parseUlid(ZERO_ULID), ZERO_ULID);
  assert.equal(parseUlid(MAX_ULID), MAX_ULID);
});

test('isCanonicalUlidAt checks stored records byte by byte (upper case only)', () => {
  const b = Buffer.from('xx01ARZ3NDEKTSV4RRFFQ69G5FAV rest');
  assert.ok(isCanonicalUlidAt(b, 2));
  assert.ok(!isCanonicalUlidAt(b, 0));
  assert.ok(!isCanonicalUlidAt(Buffer.from('01arz3ndektsv4rrffq69g5fav'), 0));
  assert.ok(!isCanonicalUlidAt(Buffer.from('01ARZ3NDEK'), 0));
});

test('entropy encoding agrees with a big-integer reference encoder', async () => {
  const { encodeEntropy, ALPHABET } = await import('../../shared/ulid.ts');
  for (let n = 0; n < 200; n++) {
    const e = new Uint8Array(10).map(() => Math.floor(Math.random() * 256));
    const out = Buffer.alloc(16);
    encodeEntropy(e, 0, out, 0);
    let v = 0n;
    for (const b of e) v = (v << 8n) | BigInt(b);
    let ref = '';
    for (let i = 0; i < 16; i++) {
      ref = ALPHABET[Number(v & 31n)] + ref;
      v >>= 5n;
    }
    assert.equal(out.toString('latin1'), ref);
  }
});

test('within one millisecond every ULID is the previous entropy plus one, carries included', async () => {
  const { ALPHABET, UlidGenerator } = await import('../../shared/ulid.ts');
  const decode = (s: string) => [...s.slice(10)].reduce((v, c) => v * 32n + BigInt(ALPHABET.indexOf(c)), 0n);
  // Random words chosen so that the counter's low characters sit just below a carry.
  const words = [0xabcd, 0x7ffffffe];
  const g = new UlidGenerator({ now: () => 1_700_000_000_000, random: () => words.shift() ?? 0 });
  let prev = g.next();
  for (let i = 0; i < 5000; i++) {
    const u = g.next();
    assert.equal(u.slice(0, 10), prev.slice(0, 10), 'same time part');
    assert.equal(decode(u), decode(prev) + 1n, `${prev} → ${u}`);
    prev = u;
  }
  // The whole 80 bits wrapping moves the time on by one millisecond, so order is kept.
  const w = new UlidGenerator({ now: () => 1_700_000_000_000 });
  (w as unknown as { entropy: Uint8Array }).entropy.fill(0xff);
  (w as unknown as { entropy: Uint8Array }).entropy[9] = 0xfe;
  const before = w.next();
  const after = w.next();
  assert.equal(before.slice(10), 'Z'.repeat(16));
  assert.equal(after.slice(10), '0'.repeat(16));
  assert.ok(after > before, `${before} < ${after}`);
});

test('writeNextInPlace writes the same ULIDs as writeNextAt, across carries, clock steps and places', () => {
  // Two generators with the same seed and clock: one writes every ULID in full, the other in
  // place into a template (as the line framer does), sometimes elsewhere (written in full).
  const seed = () => {
    const words = [0x1234, 0x7fffff00];
    return () => words.shift() ?? 0;
  };
  const times: number[] = [];
  let t = 1_700_000_000_000;
  for (let i = 0; i < 3000; i++) {
    if (i % 700 === 10) t += 1; // the time moves on
    if (i === 1500) t -= 3; // and steps back once
    times.push(t);
  }
  const full = new UlidGenerator({ random: seed() });
  const inPlace = new UlidGenerator({ random: seed() });
  const template = Buffer.from(`${'-'.repeat(26)} web `);
  const other = Buffer.alloc(40, 0x2d);
  const expected = Buffer.alloc(26);
  let prev = '';
  for (let i = 0; i < times.length; i++) {
    full.writeNextAt(expected, 0, times[i]);
    // Every 100th ULID goes to another place, or to the template at another offset.
    const [buf, off] = i % 100 === 50 ? [other, 7] : i % 100 === 99 ? [template, 1] : [template, 0];
    inPlace.writeNextInPlace(buf, off, times[i]);
    const got = buf.toString('latin1', off, off + 26);
    assert.equal(got, expected.toString('latin1'), `ULID ${i}`);
    if (buf === template && off === 0) assert.equal(template.toString('latin1', 26), ' web ');
    assert.ok(got > prev, `${got} > ${prev}`);
    prev = got;
    if (off === 1) template.write(`-${'+'.repeat(25)} web `, 0, 'latin1'); // its ULID was overwritten
  }
});
