// Real `oklog store` processes: memory while streaming a large result, and recovery after kill -9.
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { test } from 'node:test';
import { freePort, type Proc, spawnTs, tempDir, waitFor } from '../helpers/index.ts';
import { line, records, T0, ulidAt } from './helpers.ts';

const iso = (ms: number) => new Date(ms).toISOString();

async function startStore(dir: string, extra: string[] = []): Promise<{ proc: Proc; url: string }> {
  const api = await freePort();
  const cluster = await freePort();
  const proc = spawnTs('cli/oklog.ts', [
    'store',
    '-api',
    `tcp://127.0.0.1:${api}`,
    '-cluster',
    `tcp://127.0.0.1:${cluster}`,
    '-store.path',
    dir,
    '-store.segment-consumers',
    '0',
    '-store.segment-replication-factor',
    '1',
    ...extra,
  ]);
  const url = `http://127.0.0.1:${api}`;
  try {
    await waitFor(
      async () => {
        if (proc.child.exitCode !== null) throw new Error(`store exited: ${proc.stderr()}`);
        return (await fetch(`${url}/health`)).ok;
      },
      'oklog store /health',
      30_000,
    );
    // The fan-out needs the node to know itself as a store peer (gossip state).
    await waitFor(
      async () =>
        (await fetch(`${url}/store/query?from=${iso(0)}&to=${iso(0)}`, { method: 'HEAD' })).status === 200,
      'store peer known',
      15_000,
    );
  } catch (err) {
    await proc.kill('SIGKILL');
    throw new Error(`${(err as Error).message}\n--- stderr ---\n${proc.stderr()}`);
  }
  return { proc, url };
}

async function activeBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(dir)) if (f.endsWith('.active')) n += (await stat(join(dir, f))).size;
  return n;
}

function memory(pid: number): Promise<{ rss: number; hwm: number }> {
  return readFile(`/proc/${pid}/status`, 'utf8').then((s) => ({
    rss: Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? 0) * 1024,
    hwm: Number(/VmHWM:\s+(\d+)/.exec(s)?.[1] ?? 0) * 1024,
  }));
}

test('a 200 MiB result streams through a store process without its RSS growing with it', async (t) => {
  const dir = await tempDir();
  let node: { proc: Proc; url: string } | null = null;
  try {
    // Four 50 MiB segments written straight into the store directory (named LOW-HIGH.flushed).
    const lineLen = 200;
    const perSeg = Math.floor((50 << 20) / lineLen);
    const pad = 'p'.repeat(lineLen - line(T0, 0, ' 0000000').length);
    let total = 0;
    for (let s = 0; s < 4; s++) {
      const buf = Buffer.allocUnsafe(perSeg * lineLen);
      for (let i = 0; i < perSeg; i++) {
        const n = s * perSeg + i;
        buf.write(line(T0 + n, 0, `${pad} ${String(n).padStart(7, '0')}`), i * lineLen, 'latin1');
      }
      const lo = ulidAt(T0 + s * perSeg);
      const hi = ulidAt(T0 + s * perSeg + perSeg - 1);
      await writeFile(join(dir.path, `${lo}-${hi}.flushed`), buf);
      total += buf.length;
    }
    node = await startStore(dir.path);
    const pid = node.proc.pid;
    // Let the scan workers finish loading (a selective query uses them), then take the baseline.
    await (await fetch(`${node.url}/store/query?from=${iso(T0)}&to=${iso(T0 + 1000)}&q=x`)).text();
    await new Promise((r) => setTimeout(r, 1500));
    const before = await memory(pid);
    let peak = before.hwm;
    let received = 0;
    let lines = 0;
    const poll = setInterval(() => {
      memory(pid).then(
        (m) => {
          peak = Math.max(peak, m.hwm);
        },
        () => {},
      );
    }, 50);
    try {
      await new Promise<void>((resolve, reject) => {
        const req = request(`${node?.url}/store/query?from=${iso(T0)}&to=${iso(T0 + 10 * perSeg)}`, (res) => {
          assert.equal(res.statusCode, 200);
          // A slow-ish reader: pause now and then so the server has to respect backpressure.
          res.on('data', (d: Buffer) => {
            received += d.length;
            for (let i = d.indexOf(10); i >= 0; i = d.indexOf(10, i + 1)) lines++;
            if (Math.random() < 0.02) {
              res.pause();
              setTimeout(() => res.resume(), 5);
            }
          });
          res.on('end', resolve);
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });
    } finally {
      clearInterval(poll);
    }
    const after = await memory(pid);
    peak = Math.max(peak, after.hwm);
    assert.equal(received, total);
    assert.equal(lines, 4 * perSeg);
    const growth = peak - before.rss;
    t.diagnostic(
      `RSS ${(before.rss / 2 ** 20).toFixed(0)} MiB before, peak ${(peak / 2 ** 20).toFixed(0)} MiB while streaming ${(total / 2 ** 20).toFixed(0)} MiB`,
    );
    assert.ok(
      growth < 80 << 20,
      `peak RSS grew by ${(growth / 2 ** 20).toFixed(0)} MiB (from ${(before.rss / 2 ** 20).toFixed(0)} MiB) for a ${(total / 2 ** 20).toFixed(0)} MiB result`,
    );
  } finally {
    await node?.proc.kill('SIGKILL');
    await dir.cleanup();
  }
});

test('kill -9: leftover .active and .reading files and a torn write are recovered on restart', async () => {
  const dir = await tempDir();
  let node: { proc: Proc; url: string } | null = null;
  try {
    await mkdir(dir.path, { recursive: true });
    node = await startStore(dir.path);
    // A stored segment, then a replication cut off mid-line by kill -9: more than one write batch
    // (1 MiB) is sent, so part of it is on disk in an .active file when the node dies.
    assert.equal(
      (await fetch(`${node.url}/store/replicate`, { method: 'POST', body: records(T0, 100) })).status,
      200,
    );
    const partial = records(T0 + 1000, 30_000, (i) => ` ${'z'.repeat(60 + (i % 40))}`);
    const cut = partial.length - 30;
    await new Promise<void>((resolve) => {
      const req = request(`${node?.url}/store/replicate`, { method: 'POST' });
      req.on('error', () => resolve());
      req.write(partial.slice(0, cut));
      waitFor(
        async () =>
          (await readdir(dir.path)).some((n) => n.endsWith('.active')) && (await activeBytes(dir.path)) > 0,
        '.active file with data',
      ).then(
        async () => {
          await node?.proc.kill('SIGKILL');
          req.destroy();
          resolve();
        },
        () => resolve(),
      );
    });
    // As if a compaction had been running: a .reading segment.
    await writeFile(
      join(dir.path, `${ulidAt(T0 + 90_000)}-${ulidAt(T0 + 90_009)}.reading`),
      records(T0 + 90_000, 10),
    );
    const before = await readdir(dir.path);
    assert.ok(
      before.some((n) => n.endsWith('.active')),
      before.join(' '),
    );

    node = await startStore(dir.path);
    const files = await readdir(dir.path);
    assert.ok(!files.some((n) => n.endsWith('.active') || n.endsWith('.reading')), files.join(' '));
    const r = await fetch(`${node.url}/store/query?from=${iso(T0)}&to=${iso(T0 + 100_000)}`);
    const lines = (await r.text()).trimEnd().split('\n');
    const ids = lines.map((l) => l.slice(0, 26));
    assert.deepEqual(ids, [...new Set(ids)].sort());
    // The 100 + 10 whole segments, and of the cut body the complete lines that reached the disk,
    // exactly as sent; a torn last line, if any, is set aside in a .bad file.
    const sent = partial.trimEnd().split('\n');
    const recovered = lines.filter(
      (l) => l.slice(0, 26) >= ulidAt(T0 + 1000) && l.slice(0, 26) < ulidAt(T0 + 90_000),
    );
    assert.ok(recovered.length > 0 && recovered.length < 30_000, `recovered ${recovered.length}`);
    assert.deepEqual(recovered, sent.slice(0, recovered.length));
    assert.equal(lines.length, 100 + recovered.length + 10);
    assert.ok(files.filter((n) => n.endsWith('.bad')).length <= 1);
    // Garbage is still refused by the restarted node.
    const g = await fetch(`${node.url}/store/replicate`, { method: 'POST', body: 'not records\n' });
    assert.equal(g.status, 400);
    assert.equal(
      (await readdir(dir.path)).filter((n) => n.endsWith('.flushed')).length,
      files.filter((n) => n.endsWith('.flushed')).length,
    );
    // A clean stop releases the LOCK.
    assert.equal(await node.proc.kill('SIGTERM'), 0);
    assert.ok(!(await readdir(dir.path)).includes('LOCK'));
    node = null;
  } finally {
    await node?.proc.kill('SIGKILL');
    await dir.cleanup();
  }
});

test('oklog store -h lists the store flags with OK Log defaults', async () => {
  const p = spawnTs('cli/oklog.ts', ['store', '-h']);
  assert.equal(await p.exited, 0);
  const out = p.stdout();
  for (const f of [
    '-store.path data/store',
    '-store.segment-consumers 1',
    '-store.segment-target-size 134217728',
    '-store.segment-target-age 3s',
    '-store.segment-delay 100ms',
    '-store.segment-buffer-size 1048576',
    '-store.segment-replication-factor 2',
    '-store.segment-retain 168h0m0s',
    '-store.segment-purge 24h0m0s',
    '-store.query-concurrency 4',
    '-ui.local false',
  ])
    assert.ok(out.includes(f), `missing ${f} in\n${out}`);
});
