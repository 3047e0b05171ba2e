import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mergeSorted } from '../../node/store/merge.ts';
import { line, T0 } from './helpers.ts';

async function* chunks(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

async function collect(src: AsyncIterable<Buffer>): Promise<string> {
  const out: Buffer[] = [];
  for await (const c of src) out.push(Buffer.from(c));
  return Buffer.concat(out).toString();
}

test('merges sorted inputs by ULID', async () => {
  const a = line(T0, 1, 'a1') + line(T0 + 2, 0, 'a2') + line(T0 + 5, 0, 'a3');
  const b = line(T0, 2, 'b1') + line(T0 + 3, 0, 'b2');
  const c = line(T0 + 4, 0, 'c1') + line(T0 + 9, 0, 'c2');
  const out = await collect(mergeSorted([chunks(a), chunks(b), chunks(c)]));
  assert.deepEqual(
    out
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[2]),
    ['a1', 'b1', 'a2', 'b2', 'c1', 'a3', 'c2'],
  );
});

test('drops duplicate ULIDs; the first input wins', async () => {
  const a = line(T0, 0, 'first') + line(T0 + 1, 0, 'x');
  const b = line(T0, 0, 'second') + line(T0 + 1, 0, 'y') + line(T0 + 2, 0, 'z');
  const out = await collect(mergeSorted([chunks(a), chunks(b)]));
  assert.equal(out, line(T0, 0, 'first') + line(T0 + 1, 0, 'x') + line(T0 + 2, 0, 'z'));
  // Input order decides, not arrival: b first now.
  const out2 = await collect(mergeSorted([chunks(b), chunks(a)]));
  assert.equal(out2, b);
});

test('runs span chunk boundaries; dedupe holds within one input too', async () => {
  const l = (i: number, t = `r${i}`) => line(T0 + i, 0, t);
  const a = chunks(l(0), l(1) + l(2), l(2, 'dup') + l(5), l(8));
  const b = chunks(l(3) + l(4), l(6), l(7) + l(8, 'dup'));
  const out = await collect(mergeSorted([a, b], { outputChunkBytes: 10 }));
  assert.equal(out, [0, 1, 2, 3, 4, 5, 6, 7, 8].map((i) => l(i)).join(''));
});

test('empty inputs and no inputs', async () => {
  assert.equal(await collect(mergeSorted([])), '');
  assert.equal(await collect(mergeSorted([chunks(), chunks('')])), '');
  const a = line(T0, 0, 'only');
  assert.equal(await collect(mergeSorted([chunks(), chunks(a)])), a);
});

test('a failing input is dropped with onInputError; without it the merge fails', async () => {
  async function* broken(): AsyncGenerator<Buffer> {
    yield Buffer.from(line(T0 + 1, 0, 'b1'));
    throw new Error('peer went away');
  }
  const a = line(T0, 0, 'a1') + line(T0 + 2, 0, 'a2');
  const failed: number[] = [];
  const out = await collect(mergeSorted([chunks(a), broken()], { onInputError: (i) => failed.push(i) }));
  assert.deepEqual(failed, [1]);
  assert.equal(out, line(T0, 0, 'a1') + line(T0 + 1, 0, 'b1') + line(T0 + 2, 0, 'a2'));
  await assert.rejects(collect(mergeSorted([chunks(a), broken()])), /peer went away/);
});

test('short lines and chunks without a final newline are malformed, never a crash', async () => {
  const a = line(T0, 0, 'ok');
  const failed: number[] = [];
  const out = await collect(
    mergeSorted([chunks(a), chunks('short\n'), chunks(`${line(T0 + 1, 0, 'x')}tail`)], {
      onInputError: (i) => failed.push(i),
    }),
  );
  assert.deepEqual(failed.sort(), [1, 2]);
  assert.equal(out, a);
  await assert.rejects(collect(mergeSorted([chunks('tiny\n')])), { code: 'OKLOG_ERR_MALFORMED_RECORD' });
});

test('stopping early closes every input', async () => {
  const closed: number[] = [];
  const gen = (id: number) =>
    (async function* () {
      try {
        for (let i = 0; i < 1000; i++) yield Buffer.from(line(T0 + i * 2 + id, 0, `in${id}`));
      } finally {
        closed.push(id);
      }
    })();
  for await (const _ of mergeSorted([gen(0), gen(1)], { outputChunkBytes: 1 })) break;
  assert.deepEqual(closed.sort(), [0, 1]);
});

test('many inputs, random data: output is sorted and unique', async () => {
  const k = 7;
  const all = new Map<string, string>();
  const inputs: string[][] = [];
  let seed = 42;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  for (let i = 0; i < k; i++) {
    const ids = new Set<number>();
    for (let j = 0; j < 200; j++) ids.add(rnd() % 500);
    const sorted = [...ids].sort((x, y) => x - y);
    inputs.push(sorted.map((n) => line(T0 + n, 0, `i${i}`)));
    for (const n of sorted) if (!all.has(String(n))) all.set(String(n), '');
  }
  const srcs = inputs.map((ls) => {
    const parts: string[] = [];
    for (let i = 0; i < ls.length; i += 13) parts.push(ls.slice(i, i + 13).join(''));
    return chunks(...parts);
  });
  const out = (await collect(mergeSorted(srcs, { outputChunkBytes: 1000 }))).trim().split('\n');
  const ids = out.map((l) => l.slice(0, 26));
  assert.deepEqual(ids, [...new Set(ids)].sort());
  assert.equal(ids.length, all.size);
});
