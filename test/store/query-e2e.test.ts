// End to end with a real `oklog ingeststore` process (issue 3, Tests): records written with
// POST /ingest/write go through the ingest log, the segment consumer and replication, and the
// query filters answer from what was stored: regex (`$` at end of line, `regex=false`, Go's
// inline flags, Go's `.` over the `\r` a CRLF line keeps), topic, from/to bounds including the whole last millisecond of `to`, the stats
// headers with X-Oklog-Records-Matched (HEAD and trailer), and limit.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, test } from 'node:test';
import { ulidTime } from '../../shared/ulid.ts';
import { type Proc, startIngeststore, tempDir, untilStorePeer, waitFor } from '../helpers/index.ts';
import { iso } from './helpers.ts';

let proc: Proc | null = null;
let cleanup: (() => Promise<void>) | null = null;
after(async () => {
  await proc?.kill('SIGKILL');
  await cleanup?.();
});

async function get(url: string, method = 'GET') {
  const r = await fetch(url, { method, signal: AbortSignal.timeout(10_000) });
  const body = await r.text();
  return { status: r.status, headers: r.headers, body, lines: body === '' ? [] : body.trimEnd().split('\n') };
}

function trailersOf(url: string): Promise<NodeJS.Dict<string>> {
  return new Promise((resolve, reject) => {
    const req = request(url, (res) => {
      res.resume();
      res.on('end', () => resolve(res.trailers));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('no answer')));
    req.end();
  });
}

test('ingeststore: regex, topic, time bounds, stats and limit on stored records', {
  timeout: 60_000,
}, async () => {
  const dir = await tempDir('oklog-e2e-query-');
  cleanup = dir.cleanup;
  const node = await startIngeststore(dir.path, '200ms', '300ms');
  proc = node.proc;
  const api = node.api;
  const start = Date.now() - 1000;
  await untilStorePeer(api);

  // Two topics, written in a few acked batches so the records span several milliseconds.
  const web: string[] = [];
  const db: string[] = [];
  for (let batch = 0; batch < 4; batch++) {
    let w = '';
    for (let i = 0; i < 10; i++) {
      const n = batch * 10 + i;
      const line = n % 5 === 0 ? `GET /item/${n} status=500 end` : `GET /item/${n} status=200 ok`;
      web.push(line);
      w += `${line}\n`;
    }
    let d = '';
    for (let i = 0; i < 5; i++) {
      const line = `select ${batch * 5 + i} from t end`;
      db.push(line);
      d += `${line}\n`;
    }
    for (const [topic, body] of [
      ['web', w],
      ['db', d],
    ]) {
      const r = await fetch(`${api}/ingest/write?topic=${topic}`, { method: 'POST', body });
      assert.equal(r.status, 200, await r.text());
    }
    await new Promise((r) => setTimeout(r, 5)); // the next batch in a later millisecond
  }
  // A CRLF line: ingest keeps its `\r`, the last character of the record's text.
  const crlf = 'POST /upload code=500 failed\r';
  const w = await fetch(`${api}/ingest/write?topic=crlf`, { method: 'POST', body: `${crlf}\n` });
  assert.equal(w.status, 200, await w.text());
  const total = web.length + db.length + 1;
  const all = `${api}/store/query?from=${iso(start)}&to=${iso(Date.now() + 60_000)}`;
  const stored = (await waitFor(
    async () => {
      const r = await get(all);
      return r.lines.length >= total ? r.lines : undefined;
    },
    'records queryable',
    20_000,
    100,
  )) as string[];
  assert.equal(stored.length, total, 'each record once');
  const ids = stored.map((l) => l.slice(0, 26));
  assert.deepEqual(ids, [...ids].sort(), 'in ULID order');
  const text = (l: string) => l.slice(27);

  // Regex: `$` matches at the end of the record; regex=false is a plain term; Go's (?i) and
  // capturing groups work.
  let r = await get(`${all}&q=${encodeURIComponent('status=500 end$')}&regex=true`);
  assert.deepEqual(
    r.lines.map(text),
    web.filter((l) => l.endsWith('status=500 end')).map((l) => `web ${l}`),
  );
  assert.equal(r.headers.get('x-oklog-regex'), 'true');
  r = await get(`${all}&q=${encodeURIComponent('end$')}&regex`);
  assert.equal(r.lines.length, web.filter((l) => l.endsWith('end')).length + db.length);
  r = await get(`${all}&q=${encodeURIComponent('status=5.0')}&regex=false`);
  assert.equal(r.lines.length, 0, 'regex=false: the dot is a dot');
  assert.equal(r.headers.get('x-oklog-regex'), 'false');
  r = await get(`${all}&q=${encodeURIComponent('(?i)STATUS=(5)00')}&regex=true`);
  assert.equal(r.lines.length, 8);
  // Go's `.` matches `\r` (JavaScript's does not): the CRLF record is found.
  r = await get(`${all}&q=${encodeURIComponent('code=500.*$')}&regex=true`);
  assert.equal(r.lines.length, 1);
  assert.ok(r.body.endsWith(` crlf ${crlf}\n`), JSON.stringify(r.body));
  r = await get(`${all}&q=${encodeURIComponent('(?=x)')}&regex=true`);
  assert.equal(r.status, 400);
  assert.match(r.body, /^compiling regex: lookahead/);

  // Topic.
  r = await get(`${all}&topic=db`);
  assert.deepEqual(
    r.lines.map(text),
    db.map((l) => `db ${l}`),
  );
  r = await get(`${all}&topic=web&q=end`);
  assert.equal(r.lines.length, 8);
  r = await get(`${all}&topic=db&q=${encodeURIComponent('^db select 1')}&regex=true`);
  assert.deepEqual(
    r.lines.map(text),
    db.filter((l) => l.startsWith('select 1')).map((l) => `db ${l}`),
  );

  // Time bounds: a `to` time covers its whole millisecond, records with entropy included.
  const mid = stored[Math.floor(stored.length / 2)];
  const t = ulidTime(mid.slice(0, 26));
  const atOrBefore = stored.filter((l) => ulidTime(l.slice(0, 26)) <= t);
  r = await get(`${api}/store/query?from=${iso(start)}&to=${iso(t)}`);
  assert.deepEqual(r.lines, atOrBefore, 'to includes its last millisecond');
  assert.ok(r.lines.includes(mid));
  r = await get(`${api}/store/query?from=${iso(start)}&to=${iso(t - 1)}`);
  assert.deepEqual(
    r.lines,
    stored.filter((l) => ulidTime(l.slice(0, 26)) < t),
  );
  r = await get(`${api}/store/query?from=${iso(t)}&to=${iso(t)}`);
  assert.deepEqual(
    r.lines,
    stored.filter((l) => ulidTime(l.slice(0, 26)) === t),
  );
  // ULID bounds are exact.
  r = await get(`${api}/store/query?from=${mid.slice(0, 26)}&to=${mid.slice(0, 26)}`);
  assert.deepEqual(r.lines, [mid]);
  r = await get(`${api}/store/query?from=2024-02-31T00:00:00Z&to=now`);
  assert.equal(r.status, 400, 'a day that does not exist');

  // Stats: HEAD carries the count; GET sends it as a trailer.
  const q = `${all}&q=status%3D500`;
  const h = await get(q, 'HEAD');
  assert.equal(h.status, 200);
  assert.equal(h.body, '');
  assert.equal(h.headers.get('x-oklog-records-matched'), '8');
  assert.equal(h.headers.get('x-oklog-q'), 'status=500');
  assert.equal(h.headers.get('x-oklog-regex'), 'false');
  assert.equal(h.headers.get('x-oklog-nodes-queried'), '1');
  assert.equal(h.headers.get('x-oklog-error-count'), '0');
  assert.ok(Number(h.headers.get('x-oklog-segments-queried')) >= 1);
  assert.ok(Number(h.headers.get('x-oklog-max-data-set-size')) > 0);
  assert.match(h.headers.get('x-oklog-duration') ?? '', /^[\d.]+(ns|µs|ms|s)$/);
  assert.equal((await trailersOf(q))['x-oklog-records-matched'], '8');
  assert.equal((await get(all, 'HEAD')).headers.get('x-oklog-records-matched'), String(total));

  // limit: the first records in ULID order.
  r = await get(`${all}&limit=7`);
  assert.deepEqual(r.lines, stored.slice(0, 7));
  assert.equal((await get(`${all}&limit=7&topic=web`, 'HEAD')).headers.get('x-oklog-records-matched'), '7');
  assert.equal((await trailersOf(`${all}&limit=7`))['x-oklog-records-matched'], '7');

  assert.equal(await node.proc.kill('SIGTERM'), 0);
  proc = null;
});
