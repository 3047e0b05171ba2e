import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { RealFileSystem, VirtualFileSystem } from '../../node/fs/index.ts';
import { ulidBytes } from '../../node/store/lines.ts';
import { Prefetch } from '../../node/store/prefetch.ts';
import { compileScanFilter, parseQueryParams } from '../../node/store/query-params.ts';
import { nextUlid, parseSegmentName, prevUlid } from '../../node/store/segment-name.ts';
import {
  type ChunkReader,
  Collector,
  openChunkReader,
  type ScanFilter,
  Scanner,
  scanSegment,
} from '../../node/store/segment-reader.ts';
import { MAX_ULID, ZERO_ULID } from '../../shared/ulid.ts';
import { tempDir } from '../helpers/index.ts';
import { line, T0, ulidAt } from './helpers.ts';

test('segment names: parse, reject, swap, nudge', () => {
  const lo = ulidAt(T0, 1);
  const hi = ulidAt(T0 + 5, 2);
  assert.deepEqual(parseSegmentName(`${lo}-${hi}.flushed`), { low: lo, high: hi, state: 'flushed' });
  assert.deepEqual(parseSegmentName(`${hi}-${lo}.reading`), { low: lo, high: hi, state: 'reading' });
  for (const bad of [
    `${lo}-${hi}.active`,
    `${lo}_${hi}.flushed`,
    `${lo.toLowerCase()}-${hi}.flushed`,
    `${lo}-${hi}x.flushed`,
    'garbage.flushed',
    `8${lo.slice(1)}-${hi}.flushed`,
  ])
    assert.equal(parseSegmentName(bad), null, bad);
  assert.equal(nextUlid('0000000000000000000000000Z'), '00000000000000000000000010');
  assert.equal(nextUlid(MAX_ULID), null);
  assert.equal(prevUlid('00000000000000000000000010'), '0000000000000000000000000Z');
  assert.equal(prevUlid(ZERO_ULID), null);
});

async function scanText(
  content: string,
  params: Record<string, string>,
  opts: { chunk?: number; virtual?: boolean; low?: string; high?: string } = {},
): Promise<string> {
  const dir = await tempDir();
  try {
    const fs = opts.virtual ? new VirtualFileSystem() : new RealFileSystem();
    const path = join(dir.path, 'seg');
    if (opts.virtual) {
      const f = await fs.create(path);
      await f.write(Buffer.from(content));
      await f.close();
    } else await writeFile(path, content);
    const p = parseQueryParams(new URLSearchParams(params).toString());
    const reader = await openChunkReader(fs, () => path, opts.chunk ?? 1 << 20);
    const first = content.slice(0, 26);
    const lastLine = content.trimEnd().split('\n').pop() ?? '';
    const out: Buffer[] = [];
    for await (const c of scanSegment(
      reader,
      compileScanFilter(p),
      ulidBytes(opts.low ?? first),
      ulidBytes(opts.high ?? lastLine.slice(0, 26)),
    ))
      out.push(c);
    return Buffer.concat(out).toString();
  } finally {
    await dir.cleanup();
  }
}

const wide = { from: ZERO_ULID, to: MAX_ULID };

test('scan: plain term, like grep, across tiny chunks (lines split between reads)', async () => {
  let content = '';
  let want = '';
  for (let i = 0; i < 3000; i++) {
    const l = line(T0 + i, 0, `${'x'.repeat(i % 97)} ${i % 10 === 3 ? 'needle' : 'hay'} end`);
    content += l;
    if (i % 10 === 3) want += l;
  }
  for (const chunk of [64 * 1024, 1 << 20]) {
    for (const virtual of [false, true]) {
      assert.equal(await scanText(content, { ...wide, q: 'needle' }, { chunk, virtual }), want);
    }
  }
  // A term that occurs only inside ULIDs does not match (the filter text starts after them).
  assert.equal(await scanText(content, { ...wide, q: ulidAt(T0 + 5).slice(0, 12) }), '');
});

test('scan: time bounds, empty term, regex, topic', async () => {
  let content = '';
  for (let i = 0; i < 100; i++) content += line(T0 + i, 0, `msg ${i}`, i % 2 === 0 ? 'even' : 'odd');
  const lines = content.trimEnd().split('\n');
  const from = ulidAt(T0 + 10);
  const to = ulidAt(T0 + 19);
  assert.equal(await scanText(content, { from, to }), `${lines.slice(10, 20).join('\n')}\n`);
  assert.equal(
    await scanText(content, { from, to, q: 'msg 1[0-5]$', regex: 'true' }),
    `${lines.slice(10, 16).join('\n')}\n`,
  );
  assert.equal(
    await scanText(content, { from, to, topic: 'odd' }),
    `${lines
      .slice(10, 20)
      .filter((_, i) => i % 2 === 1)
      .join('\n')}\n`,
  );
  assert.equal(await scanText(content, { ...wide, q: 'msg 99' }), `${lines[99]}\n`);
  // Whole-segment fast path (segment inside the bounds).
  assert.equal(await scanText(content, wide), content);
});

test('scan: a torn last line (no newline) is not a record: a query counts it, compaction gets it', async () => {
  const content = `${line(T0, 0, 'a')}${line(T0 + 1, 0, 'b').trimEnd()}`;
  assert.equal(await scanText(content, wide, { high: ulidAt(T0 + 1) }), line(T0, 0, 'a'));
  // Chunks of a few bytes: the torn line is what is left in the carry at the end of the file.
  const scan = async (filter: ScanFilter, size: number) => {
    const bytes = Buffer.from(content);
    let at = 0;
    const reader: ChunkReader = {
      next: async () => {
        if (at >= bytes.length) return null;
        at += size;
        return bytes.subarray(at - size, at);
      },
      close: async () => {},
    };
    let malformed = 0;
    const out: string[] = [];
    const opts = {
      onMalformed: (n: number) => {
        malformed += n;
      },
    };
    for await (const c of scanSegment(reader, filter, ulidBytes(ulidAt(T0)), ulidBytes(ulidAt(T0 + 1)), opts))
      out.push(c.toString());
    return { out: out.join(''), malformed };
  };
  const queries: Record<string, string>[] = [{}, { q: 'b' }, { q: 'b$', regex: 'true' }];
  for (const size of [7, content.length]) {
    // A query skips it and counts it (routes.ts then has the segment repaired)…
    for (const q of queries) {
      const f = compileScanFilter(parseQueryParams(new URLSearchParams({ ...wide, ...q }).toString()));
      const r = await scan(f, size);
      assert.equal(r.out, 'q' in q ? '' : line(T0, 0, 'a'));
      assert.equal(r.malformed, 1, JSON.stringify(q));
    }
    // …compaction (skipMalformed off) gets it as it is, for its check to refuse the input.
    const all = compileScanFilter(parseQueryParams(new URLSearchParams(wide).toString()));
    const r = await scan({ ...all, skipMalformed: false }, size);
    assert.equal(r.out, content);
    assert.equal(r.malformed, 0);
  }
});

test('scan: a regex reads the clock after every record it runs on, a topic search included', () => {
  let content = '';
  for (let i = 0; i < 100; i++) content += line(T0 + i, 0, `x${i}`, 'web');
  const buf = Buffer.from(content);
  const lineEnd = (n: number) => {
    let at = 0;
    for (let k = 0; k < n; k++) at = content.indexOf('\n', at) + 1;
    return at;
  };
  // Where a scan whose deadline has already passed stops: a slice overruns by this much.
  const stopsAt = (params: Record<string, string>) => {
    const f = compileScanFilter(parseQueryParams(new URLSearchParams({ ...wide, ...params }).toString()));
    const s = new Scanner(f, ulidBytes(ulidAt(T0)), ulidBytes(ulidAt(T0 + 99)), new Collector());
    return s.region(buf, 0, buf.length, performance.now() - 1);
  };
  // With a topic the scan searches for `web ` and runs the regex on every hit: one record, not
  // 32 (a 5 ms slice took 467 ms on 4 KiB records).
  assert.equal(stopsAt({ topic: 'web', q: 'x[0-9]+$', regex: 'true' }), lineEnd(1));
  assert.equal(stopsAt({ q: 'x[0-9]+$', regex: 'true' }), lineEnd(1));
  // A plain term costs next to nothing per hit: the clock is read every 32.
  assert.equal(stopsAt({ topic: 'web', q: 'x' }), lineEnd(32));
});

test('prefetch reads ahead within its budget and closes its source', async () => {
  let produced = 0;
  let closed = false;
  const src = (async function* () {
    try {
      for (let i = 0; i < 100; i++) {
        produced++;
        yield Buffer.alloc(100);
      }
    } finally {
      closed = true;
    }
  })();
  const p = new Prefetch(src, 1000);
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(produced >= 10 && produced <= 12, `produced ${produced}`);
  const first = await p.next();
  assert.equal(first.done, false);
  await p.return();
  assert.equal(closed, true);
  assert.ok(produced < 20);
});

test('scan workers: byte ranges partition a file exactly, whatever the offsets and chunk size', async () => {
  const { ScanPool } = await import('../../node/store/scan-pool.ts');
  const { silent } = await import('./helpers.ts');
  const dir = await tempDir();
  const pool = new ScanPool(silent, 2);
  try {
    let content = '';
    for (let i = 0; i < 400; i++) content += line(T0 + i, 0, `${'y'.repeat((i * 37) % 150)} n${i % 5}`);
    const path = join(dir.path, 'seg');
    await writeFile(path, content);
    const lines = content.trimEnd().split('\n');
    const want = `${lines.filter((l) => l.endsWith('n3')).join('\n')}\n`;
    const collect = async (start: number, end: number | undefined, chunk: number) => {
      const out: Buffer[] = [];
      for await (const c of pool.scan({
        path: () => path,
        params: { q: 'n3', regex: false, topic: undefined, from: ZERO_ULID, to: MAX_ULID },
        low: ZERO_ULID,
        high: MAX_ULID,
        chunk,
        budget: 1000,
        start,
        end,
      }))
        out.push(c);
      return Buffer.concat(out).toString();
    };
    const nl = content.indexOf('\n', 5000);
    for (const chunk of [97, 4096]) {
      for (const cuts of [[nl], [nl + 1], [nl + 2], [1, 2, 3], [10_000, 20_000, 20_001, 30_000]]) {
        const bounds = [0, ...cuts, content.length];
        let got = '';
        for (let k = 0; k + 1 < bounds.length; k++) got += await collect(bounds[k], bounds[k + 1], chunk);
        assert.equal(got, want, `chunk ${chunk} cuts ${cuts}`);
      }
    }
    // A whole-file scan with a small budget (credit flow control) still returns everything.
    assert.equal(await collect(0, undefined, 97), want);
  } finally {
    await pool.close();
    await dir.cleanup();
  }
});
