// `oklogctl query` / `oklog query` / `oklogctl stream` against a fake store HTTP server.
import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { after, before, test } from 'node:test';
import { formatRfc3339Local } from '../../cli/output.ts';
import { UlidGenerator } from '../../shared/ulid.ts';
import { freePort, sleep, spawnTs, waitFor } from '../helpers/index.ts';
import { FakeHttp, run } from './helpers.ts';

const T0 = Date.parse('2024-03-01T12:00:00.250Z');
const gen = new UlidGenerator({ now: () => T0 });
const records = [
  `${gen.next()} default hello 100% world\n`,
  `${gen.next()} audit login user=x\n`,
  `${gen.next()} default bye\n`,
];
const BODY = records.join('');

function storeHeaders(res: ServerResponse, status = 200, extra: Record<string, string> = {}) {
  res.writeHead(status, {
    'X-Oklog-From': '2024-03-01T11:00:00Z',
    'X-Oklog-To': '2024-03-01T13:00:00Z',
    'X-Oklog-Q': 'hello',
    'X-Oklog-Regex': 'false',
    'X-Oklog-Nodes-Queried': '2',
    'X-Oklog-Segments-Queried': '5',
    'X-Oklog-Max-Data-Set-Size': String(3 * 1024 * 1024 + 17),
    'X-Oklog-Error-Count': '0',
    'X-Oklog-Duration': '2.316ms',
    'X-Oklog-Records-Matched': '3',
    ...extra,
  });
}

let store: FakeHttp;
before(async () => {
  store = await FakeHttp.start();
  store.handler = (req, res) => {
    if (req.url?.startsWith('/store/query')) {
      storeHeaders(res);
      res.end(req.method === 'HEAD' ? undefined : BODY);
    } else res.writeHead(404).end('404 page not found\n');
  };
});
after(() => store.close());

const query = (args: string[]) => run('cli/oklogctl.ts', ['query', '-store', store.address, ...args]);

test('default output strips the ULID; from/to sent as RFC 3339 with milliseconds', async () => {
  const before = Date.now();
  const r = await query(['-from', '2024-03-01T11:00:00.123+01:00', '-to', '5m', '-q', 'a b+c']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'default hello 100% world\naudit login user=x\ndefault bye\n');
  assert.equal(r.stderr, '');
  const url = new URL(store.requests.at(-1)!.url, 'http://x');
  assert.equal(store.requests.at(-1)!.method, 'GET');
  assert.equal(url.pathname, '/store/query');
  assert.equal(url.searchParams.get('from'), '2024-03-01T10:00:00.123Z');
  const to = Date.parse(url.searchParams.get('to')!);
  assert.ok(Math.abs(to - (before - 300_000)) < 10_000, 'to = 5m ago');
  assert.match(url.searchParams.get('to')!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(url.searchParams.get('q'), 'a b+c');
  assert.equal(url.searchParams.has('regex'), false, 'regex only when set');
  assert.equal(url.searchParams.has('limit'), false);
});

test('-ulid, -time, -o json, -regex, -topic and -limit passthrough', async () => {
  const u = await query(['-ulid', '-regex', '-q', 'h.llo']);
  assert.equal(u.stdout, BODY);
  const url = new URL(store.requests.at(-1)!.url, 'http://x');
  assert.equal(url.searchParams.get('regex'), 'true');

  const t = await query(['-time']);
  const ts = formatRfc3339Local(T0);
  assert.equal(t.stdout.split('\n')[0], `${ts} default hello 100% world`);

  const j = await query(['-o', 'json']);
  const objs = j.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(objs[0], {
    ulid: records[0].slice(0, 26),
    time: '2024-03-01T12:00:00.250Z',
    topic: 'default',
    message: 'hello 100% world',
  });
  assert.equal(objs.length, 3);

  // The fake store ignores limit and topic: the client enforces them as well.
  const l = await query(['-limit', '2', '-topic', 'default']);
  const lurl = new URL(store.requests.at(-1)!.url, 'http://x');
  assert.equal(lurl.searchParams.get('limit'), '2');
  assert.equal(lurl.searchParams.get('topic'), 'default');
  assert.equal(l.stdout, 'default hello 100% world\ndefault bye\n');
});

test('-v and -stats (HEAD) print the X-Oklog-* stats; -stats -o json prints them as JSON', async () => {
  const v = await query(['-v']);
  assert.equal(v.code, 0);
  assert.match(v.stderr, /^GET http:\/\/127\.0\.0\.1:\d+\/store\/query\?from=/);
  assert.match(v.stderr, /\nResponse in [\d.]+(ms|µs|s)\n/);
  assert.match(v.stderr, /\nQueried from 2024-03-01T11:00:00Z\nQueried to 2024-03-01T13:00:00Z\n/);
  assert.match(v.stderr, /\nQueried normal string "hello"\n2 node\(s\) queried\n5 segment\(s\) queried\n/);
  assert.match(v.stderr, /\n3145745B \(3MiB\) maximum data set size\n0 error\(s\)\n2\.316ms server-reported/);
  assert.match(v.stderr, /\n3 record\(s\) matched\n/);
  assert.equal(v.stdout.split('\n').length, 4);

  const s = await query(['-stats']);
  assert.equal(s.code, 0);
  assert.equal(store.requests.at(-1)!.method, 'HEAD');
  assert.equal(s.stdout, '');
  assert.match(s.stderr, /^HEAD .*\n.*2 node\(s\) queried/s);

  const sj = await query(['-stats', '-o', 'json']);
  const stats = JSON.parse(sj.stdout);
  assert.equal(stats.nodes_queried, 2);
  assert.equal(stats.records_matched, 3);
  assert.equal(stats.partial, false);
  assert.equal(sj.stderr, '');
});

test('206: results printed, failed nodes named on stderr, exit 3', async () => {
  const partial = await FakeHttp.start();
  try {
    partial.handler = (_req, res) => {
      storeHeaders(res, 206, { 'X-Oklog-Error-Count': '1', 'X-Oklog-Failed-Nodes': '10.0.0.7:7650' });
      res.end(BODY);
    };
    const r = await run('cli/oklog.ts', ['query', '-store', partial.address]);
    assert.equal(r.code, 3);
    assert.equal(r.stdout.split('\n').length, 4, 'results printed');
    assert.match(
      r.stderr,
      /^oklog query: warning: partial results: 1 store node\(s\) did not answer: 10\.0\.0\.7:7650\n$/,
    );
  } finally {
    await partial.close();
  }
});

test('a node failing mid-body (trailers) also gives the warning and exit 3', async () => {
  const late = await FakeHttp.start();
  try {
    late.handler = (_req, res) => {
      res.setHeader('Trailer', 'X-Oklog-Records-Matched, X-Oklog-Error-Count, X-Oklog-Failed-Nodes');
      storeHeaders(res, 200, { 'X-Oklog-Records-Matched': '' });
      res.write(BODY);
      res.addTrailers({
        'X-Oklog-Records-Matched': '3',
        'X-Oklog-Error-Count': '1',
        'X-Oklog-Failed-Nodes': 'store-b:7650',
      });
      res.end();
    };
    const r = await run('cli/oklogctl.ts', ['query', '-v', '-store', late.address]);
    assert.equal(r.code, 3);
    assert.equal(r.stdout.split('\n').length, 4);
    assert.match(r.stderr, /\n3 record\(s\) matched\n/);
    assert.match(r.stderr, /warning: partial results: 1 store node\(s\) did not answer: store-b:7650\n$/);
  } finally {
    await late.close();
  }
});

test('errors: HTTP error, unreachable node, bad time, bad address, bad flag, -h', async () => {
  const bad = await FakeHttp.start();
  try {
    bad.handler = (_req, res) => res.writeHead(400).end("parsing 'from': x: can't parse\n");
    const r = await run('cli/oklogctl.ts', ['query', '-store', bad.address]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^oklogctl query: GET http:\/\/127\.0\.0\.1:\d+\/store\/query: 400 Bad Request: parsing/,
    );
    assert.equal(r.stderr.split('\n').length, 2, 'one line');
  } finally {
    await bad.close();
  }
  const port = await freePort();
  const down = await run('cli/oklogctl.ts', ['query', '-store', `127.0.0.1:${port}`]);
  assert.equal(down.code, 1);
  assert.match(
    down.stderr,
    /^oklogctl query: GET http:\/\/127\.0\.0\.1:\d+\/store\/query: connection refused/,
  );
  assert.equal(down.stderr.split('\n').length, 2);

  const t = await query(['-from', 'yesterday']);
  assert.equal(t.code, 1);
  assert.equal(t.stderr, 'oklogctl query: couldn\'t parse -from ("yesterday") as either duration or time\n');
  const a = await run('cli/oklogctl.ts', ['query', '-store', 'http://x/y']);
  assert.equal(a.code, 1);
  assert.equal(a.stderr, 'oklogctl query: http://x/y: unsupported address format\n');
  const f = await query(['-bogus']);
  assert.equal(f.code, 2);
  assert.match(f.stderr, /^oklogctl query: flag provided but not defined: -bogus\nUSAGE/);
  const h = await run('cli/oklogctl.ts', ['query', '-h']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /-store localhost:7650/);
  assert.match(h.stdout, /-from 1h/);
  assert.match(h.stdout, /-to now/);
});

test('a closed stdout (| head) ends the query quietly', async () => {
  const big = await FakeHttp.start();
  try {
    const line = `${gen.next()} default ${'x'.repeat(200)}\n`;
    big.handler = (_req, res) => {
      storeHeaders(res);
      let n = 0;
      const pump = () => {
        while (n < 200_000) {
          n++;
          if (!res.write(line)) return void res.once('drain', pump);
        }
        res.end();
      };
      res.on('error', () => {});
      pump();
    };
    const p = spawnTs('cli/oklogctl.ts', ['query', '-store', big.address]);
    await waitFor(() => p.stdout().length > 0, 'first output');
    p.child.stdout!.destroy();
    const code = await p.exited;
    assert.equal(code, 0);
    assert.equal(p.stderr(), '');
  } finally {
    await big.close();
  }
});

test('stream: prints lines until the server closes; sends q, regex, window, topic', async () => {
  const s = await FakeHttp.start();
  try {
    s.handler = (_req, res) => {
      res.writeHead(200);
      res.write(records[0]);
      setTimeout(() => res.end(records[2]), 100);
    };
    const r = await run('cli/oklogctl.ts', [
      'stream',
      '-store',
      s.address,
      '-q',
      'x',
      '-regex',
      '-window',
      '1500ms',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'default hello 100% world\ndefault bye\n');
    const url = new URL(s.requests[0].url, 'http://x');
    assert.equal(url.pathname, '/store/stream');
    assert.equal(url.searchParams.get('q'), 'x');
    assert.equal(url.searchParams.get('regex'), 'true');
    assert.equal(url.searchParams.get('window'), '1.5s');
    const u = await run('cli/oklog.ts', ['stream', '-store', s.address, '-ulid', '-topic', 'default']);
    assert.equal(u.stdout, `${records[0]}${records[2]}`);
    assert.equal(new URL(s.requests[1].url, 'http://x').searchParams.get('topic'), 'default');
  } finally {
    await s.close();
  }
});

test('stream: SIGINT ends it quietly with exit 0; errors are one line', async () => {
  const s = await FakeHttp.start();
  try {
    s.handler = (_req, res) => {
      res.writeHead(200);
      res.write(records[1]);
    };
    const p = spawnTs('cli/oklogctl.ts', ['stream', '-store', s.address]);
    await waitFor(() => p.stdout().includes('audit login'), 'first record');
    await sleep(50);
    assert.equal(await p.kill('SIGINT'), 0);
    assert.equal(p.stderr(), '');
  } finally {
    await s.close();
  }
  const port = await freePort();
  const down = await run('cli/oklogctl.ts', ['stream', '-store', `127.0.0.1:${port}`]);
  assert.equal(down.code, 1);
  assert.match(
    down.stderr,
    /^oklogctl stream: GET http:\/\/127\.0\.0\.1:\d+\/store\/stream: connection refused/,
  );
  const w = await run('cli/oklogctl.ts', ['stream', '-window', 'soon']);
  assert.equal(w.code, 2);
  const h = await run('cli/oklog.ts', ['stream', '-h']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /oklog stream \[flags\]/);
  assert.match(h.stdout, /-window 3s/);
});

/** A store whose query body ends with trailers naming a node that failed mid-body. */
function failingTrailers(res: ServerResponse, body: string) {
  res.setHeader('Trailer', 'X-Oklog-Records-Matched, X-Oklog-Error-Count, X-Oklog-Failed-Nodes');
  storeHeaders(res, 200, { 'X-Oklog-Records-Matched': '' });
  res.write(body);
  res.addTrailers({
    'X-Oklog-Records-Matched': '3',
    'X-Oklog-Error-Count': '1',
    'X-Oklog-Failed-Nodes': 'store-c:7650',
  });
  res.end();
}

test('-limit: reaching the limit still reads the trailers, so a failed node is reported (exit 3)', async () => {
  const late = await FakeHttp.start();
  try {
    late.handler = (_req, res) => failingTrailers(res, BODY);
    // The store stops at the limit (3 here); an old one that ignores it sends more (limit 2).
    for (const limit of ['3', '2']) {
      const r = await run('cli/oklogctl.ts', ['query', '-limit', limit, '-store', late.address]);
      assert.equal(r.code, 3, r.stderr);
      assert.equal(r.stdout.split('\n').length - 1, Number(limit), 'no more than -limit printed');
      assert.match(r.stderr, /warning: partial results: 1 store node\(s\) did not answer: store-c:7650\n$/);
    }
  } finally {
    await late.close();
  }
});

test('-nocopy: the body is read but not printed; trailers still count', async () => {
  const r = await query(['-nocopy']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(store.requests.at(-1)!.method, 'GET');
  const late = await FakeHttp.start();
  try {
    late.handler = (_req, res) => failingTrailers(res, BODY);
    const f = await run('cli/oklogctl.ts', ['query', '-nocopy', '-store', late.address]);
    assert.equal(f.code, 3);
    assert.equal(f.stdout, '');
    assert.match(f.stderr, /did not answer: store-c:7650\n$/);
  } finally {
    await late.close();
  }
});

test('a response cut off mid-body: query fails naming the node; stream ends with exit 0 and a note', async () => {
  const cut = await FakeHttp.start();
  try {
    cut.handler = (_req, res) => {
      storeHeaders(res);
      res.write(records[0]);
      // The node dies (or stops) mid-response: no chunked terminator.
      setTimeout(() => res.socket?.destroy(), 50);
    };
    const q = await run('cli/oklogctl.ts', ['query', '-store', cut.address]);
    assert.equal(q.code, 1);
    assert.equal(q.stdout, 'default hello 100% world\n');
    assert.equal(
      q.stderr,
      `oklogctl query: GET http://${cut.address}/store/query: the node closed the connection mid-response after 1 record(s); the results are incomplete\n`,
    );
    const s = await run('cli/oklogctl.ts', ['stream', '-store', cut.address]);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stdout, 'default hello 100% world\n');
    assert.equal(
      s.stderr,
      `oklogctl stream: the stream ended: http://${cut.address} closed the connection mid-response (node stopped or failed)\n`,
    );
  } finally {
    await cut.close();
  }
});

test("-store '' and an inverted -from/-to are clear one-line errors", async () => {
  const e = await run('cli/oklogctl.ts', ['query', '-store', '']);
  assert.equal(e.code, 1);
  assert.equal(e.stderr, 'oklogctl query: -store: empty address\n');
  const se = await run('cli/oklogctl.ts', ['stream', '-store', ' ']);
  assert.equal(se.code, 1);
  assert.equal(se.stderr, 'oklogctl stream: -store: empty address\n');
  const n = store.requests.length;
  const inv = await query(['-from', '2024-03-02T00:00:00Z', '-to', '2024-03-01T00:00:00Z']);
  assert.equal(inv.code, 1);
  assert.equal(
    inv.stderr,
    'oklogctl query: -from (2024-03-02T00:00:00.000Z) is after -to (2024-03-01T00:00:00.000Z): nothing can match\n',
  );
  assert.equal(store.requests.length, n, 'nothing was sent');
});

test('stream: SIGTERM ends it while stdout is blocked', async () => {
  const s = await FakeHttp.start();
  try {
    const line = `${gen.next()} default ${'s'.repeat(500)}\n`;
    s.handler = (_req, res) => {
      res.writeHead(200);
      res.on('error', () => {});
      const pump = () => {
        while (res.write(line));
        res.once('drain', pump);
      };
      pump();
    };
    const p = spawnTs('cli/oklogctl.ts', ['stream', '-store', s.address]);
    try {
      p.child.stdout!.pause(); // `oklogctl stream | sleep 30`
      await waitFor(() => s.requests.length > 0, 'stream requested');
      await sleep(500);
      process.kill(-p.pid, 'SIGTERM');
      const code = await Promise.race([p.exited, sleep(3000).then(() => 'hung')]);
      assert.equal(code, 0);
    } finally {
      await p.kill('SIGKILL');
    }
  } finally {
    await s.close();
  }
});
