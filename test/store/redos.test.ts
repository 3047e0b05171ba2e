// An expensive regex against a real `oklog store` process (issue 3, Tests: "a ReDoS pattern does
// not delay a concurrent simple query by more than a second"). The pattern is at the caps
// (MAX_REPEATS repetition operators, capturing groups) and costs about a millisecond per record,
// and there is enough data to keep every scan worker busy for far longer than the test: a simple
// query, a HEAD count and /health must still answer at once, and when the client goes away the
// scans stop (CPU and file descriptors back to idle) although they never produced a byte. The
// stream variant: an expensive _stream subscriber does not stall /health, a query or a cheap
// subscriber. Every request has its own timeout, so a regression fails rather than hangs.
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MAX_REPEATS } from '../../node/store/regex.ts';
import { type Proc, tempDir, untilStorePeer, waitFor } from '../helpers/index.ts';
import { iso, line, startSegmentStore, T0, ulidAt } from './helpers.ts';

// 60-way alternation under a star, then 31 `(.*)` groups: 32 repetition operators, ~1 ms per
// 200-byte record on the linear engine (without the capture rewrite, far more).
const alternation = Array.from({ length: 60 }, (_, i) => `p${i}`).join('|');
const EVIL = `(${alternation})*${'(.*)'.repeat(MAX_REPEATS - 1)}QQQ`;
const SMALL_AT = T0 + 10_000_000;

let node: { proc: Proc; api: string } | null = null;
let dir: { path: string; cleanup: () => Promise<void> } | null = null;

before(async () => {
  dir = await tempDir('oklog-redos-');
  // Six 1 MiB segments of records the pattern must fail on, and one small segment elsewhere in time.
  const perSeg = Math.floor((1 << 20) / 200);
  const pad = 'p'.repeat(200 - line(T0, 0, ' 0000000').length);
  for (let s = 0; s < 6; s++) {
    let body = '';
    for (let i = 0; i < perSeg; i++)
      body += line(T0 + s * perSeg + i, 0, `${pad} ${String(i).padStart(7, '0')}`);
    await writeFile(
      join(dir.path, `${ulidAt(T0 + s * perSeg)}-${ulidAt(T0 + s * perSeg + perSeg - 1)}.flushed`),
      body,
    );
  }
  const small = [0, 1, 2].map((i) => line(SMALL_AT + i, 0, `users ${i}`)).join('');
  await writeFile(join(dir.path, `${ulidAt(SMALL_AT)}-${ulidAt(SMALL_AT + 2)}.flushed`), small);
  const started = await startSegmentStore(dir.path);
  node = { proc: started.proc, api: started.api };
  await untilStorePeer(started.api);
});
after(async () => {
  await node?.proc.kill('SIGKILL');
  await dir?.cleanup();
});

async function cpuMs(pid: number): Promise<number> {
  const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime + stime, in clock ticks of 10 ms
}

async function fds(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** CPU used by the node over `ms`, as a share of one core. */
async function cpuShare(pid: number, ms: number): Promise<number> {
  const a = await cpuMs(pid);
  await new Promise((r) => setTimeout(r, ms));
  return ((await cpuMs(pid)) - a) / ms;
}

async function timed(
  url: string,
  method = 'GET',
): Promise<{ ms: number; status: number; body: string; res: Response }> {
  const t = performance.now();
  const res = await fetch(url, { method, signal: AbortSignal.timeout(5000) });
  const body = await res.text();
  return { ms: performance.now() - t, status: res.status, body, res };
}

/** Opens a request and keeps reading whatever comes; `close` disconnects. */
function open(url: string) {
  let got = 0;
  let status = 0;
  const req = request(url, (res) => {
    status = res.statusCode ?? 0;
    res.on('data', (d: Buffer) => {
      got += d.length;
    });
    res.on('error', () => {});
  });
  req.on('error', () => {});
  req.end();
  return { close: () => req.destroy(), got: () => got, status: () => status };
}

test('a ReDoS pattern does not delay a concurrent simple query by more than a second', {
  timeout: 60_000,
}, async () => {
  assert.ok(node);
  const { api, proc } = node;
  const pid = proc.pid;
  // Over the caps is refused outright.
  const over = await timed(
    `${api}/store/query?from=${iso(T0)}&to=${iso(T0 + 1)}&regex&q=${encodeURIComponent(`${EVIL}.*`)}`,
  );
  assert.equal(over.status, 400);
  assert.match(over.body, /repetition operators/);

  const idleFds = await fds(pid);
  const evil = open(
    `${api}/store/query?from=${iso(T0)}&to=${iso(T0 + 10_000_000)}&regex=true&q=${encodeURIComponent(EVIL)}`,
  );
  try {
    // Both workers busy with it (about two cores).
    await waitFor(
      async () => (await cpuShare(pid, 300)) > 1.4,
      'the expensive query occupies the workers',
      10_000,
      0,
    );
    const simple = `${api}/store/query?from=${iso(SMALL_AT)}&to=${iso(SMALL_AT + 10)}`;
    for (let round = 0; round < 3; round++) {
      const q = await timed(`${simple}&q=users`);
      assert.equal(q.status, 200);
      assert.equal(q.body.split('\n').filter(Boolean).length, 3);
      assert.ok(q.ms < 1000, `simple query took ${q.ms.toFixed(0)} ms`);
      const r = await timed(`${simple}&q=${encodeURIComponent('^default users [0-9]$')}&regex=true`);
      assert.equal(r.body.split('\n').filter(Boolean).length, 3);
      assert.ok(r.ms < 1000, `simple regex query took ${r.ms.toFixed(0)} ms`);
      const h = await timed(`${simple}&q=users`, 'HEAD');
      assert.equal(h.res.headers.get('x-oklog-records-matched'), '3');
      assert.ok(h.ms < 1000, `HEAD took ${h.ms.toFixed(0)} ms`);
      const health = await timed(`${api}/health`);
      assert.ok(health.ms < 200, `/health took ${health.ms.toFixed(0)} ms`);
    }
    assert.equal(evil.status(), 200, 'the expensive query is answering');
    assert.equal(evil.got(), 0, 'and has found nothing');
  } finally {
    evil.close();
  }
  // It found nothing and sent nothing, yet the client leaving stops its scans at once.
  await waitFor(
    async () => (await cpuShare(pid, 300)) < 0.2,
    'worker CPU back to idle after the disconnect',
    3000,
    0,
  );
  await waitFor(async () => (await fds(pid)) <= idleFds, 'segment files closed after the disconnect', 3000);
});

test('an expensive stream subscriber does not stall /health, a query or a cheap subscriber', {
  timeout: 60_000,
}, async () => {
  assert.ok(node);
  const { api } = node;
  const expensive = open(`${api}/store/_stream?regex=true&q=${encodeURIComponent(EVIL)}`);
  let cheapText = '';
  const cheapReq = request(`${api}/store/_stream?q=needle`, (res) => {
    res.setEncoding('utf8').on('data', (d: string) => {
      cheapText += d;
    });
    res.on('error', () => {});
  });
  cheapReq.on('error', () => {});
  cheapReq.end();
  try {
    await waitFor(
      async () => /^oklog_store_stream_subscribers 2$/m.test(await (await fetch(`${api}/metrics`)).text()),
      'both subscribed',
    );
    // A 1 MiB segment: about five seconds of matching for the expensive subscriber.
    const base = T0 + 20_000_000;
    const pad = 'p'.repeat(150);
    let body = '';
    for (let i = 0; i < 6000; i++) body += line(base + i, 0, `${pad} ${i}${i === 5999 ? ' needle' : ''}`);
    const t = performance.now();
    const r = await fetch(`${api}/store/replicate`, {
      method: 'POST',
      body,
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(r.status, 200);
    // The cheap subscriber's record arrives while the expensive one is still being matched.
    await waitFor(() => cheapText.includes('needle'), 'cheap subscriber served', 2000, 10);
    assert.ok(performance.now() - t < 2000);
    await waitFor(
      async () => (await cpuShare(node?.proc.pid ?? 0, 300)) > 0.8,
      'the expensive matching runs',
      5000,
      0,
    );
    for (let round = 0; round < 5; round++) {
      const health = await timed(`${api}/health`);
      assert.ok(health.ms < 200, `/health took ${health.ms.toFixed(0)} ms`);
      const q = await timed(`${api}/store/query?from=${iso(SMALL_AT)}&to=${iso(SMALL_AT + 10)}&q=users`);
      assert.equal(q.body.split('\n').filter(Boolean).length, 3);
      assert.ok(q.ms < 1000, `query took ${q.ms.toFixed(0)} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(cheapText.split('\n').filter(Boolean).length, 1);
    assert.equal(expensive.status(), 200);
    assert.equal(expensive.got(), 0, 'nothing matches the expensive pattern');
  } finally {
    expensive.close();
    cheapReq.destroy();
  }
  await waitFor(
    async () => /^oklog_store_stream_subscribers 0$/m.test(await (await fetch(`${api}/metrics`)).text()),
    'subscribers gone',
  );
});
