// Ingest benchmark (issue 2), DESIGN.md §8 targets, every figure against a reference measured in
// the same run on the same machine:
// - fast mode: RECORDS records of 100–200 B over CONNS parallel TCP connections into a real
//   `oklog ingest` process, vs a raw reference (a node process that only writes the bytes it
//   receives on each connection to a file). Target ≥ 60% of the reference.
// - durable mode: the same over the durable port (group commit) vs a reference that writes and
//   fsyncs every record (OK Log's durable mode), CONNS connections in parallel. Target ≥ 20×.
// - peak RSS (VmHWM) of the node over the whole run. Target < 300 MiB.
// Each throughput is the best of ROUNDS, alternating reference and oklog, each run after a `sync`.
// Run alone: `npx tsx bench/ingest.ts`; from `npm run bench`, `run()` returns the markdown section.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort, startOklog, tempDir, waitFor } from '../test/helpers/index.ts';
import { memoryMiB, runIfMain, withNode, withTempDir } from './lib.ts';

const RECORDS = Number(process.env.BENCH_INGEST_RECORDS ?? 1_000_000);
const DURABLE_RECORDS = Number(process.env.BENCH_INGEST_DURABLE_RECORDS ?? 200_000);
const CONNS = Number(process.env.BENCH_INGEST_CONNS ?? 4);
const ROUNDS = Number(process.env.BENCH_INGEST_ROUNDS ?? 5);
/** The per-record-fsync reference is stopped after this long; its rate is what it managed. */
const FSYNC_REF_MAX_MS = 3000;

/** RECORDS lines of 100–200 bytes (newline included), split into CONNS newline-aligned slices. */
function generate(records: number, conns: number): { slices: Buffer[]; bytes: number } {
  let seed = 42;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ';
  const filler = Buffer.alloc(256);
  for (let i = 0; i < filler.length; i++) filler[i] = ALNUM.charCodeAt(rand() % ALNUM.length);
  const buf = Buffer.allocUnsafe(records * 200);
  let o = 0;
  const cuts: number[] = [];
  for (let i = 0; i < records; i++) {
    const len = 100 + (rand() % 101) - 1; // payload 99..199, plus the newline
    const head = `ts=${1_700_000_000_000 + i} svc=${i % 97} req=${i} `;
    o += buf.write(head, o, 'latin1');
    const rest = len - head.length;
    const start = rand() % (filler.length - rest);
    filler.copy(buf, o, start, start + rest);
    o += rest;
    buf[o++] = 0x0a;
    if ((i + 1) % Math.ceil(records / conns) === 0) cuts.push(o);
  }
  const all = buf.subarray(0, o);
  const slices: Buffer[] = [];
  let from = 0;
  for (const to of [...cuts.filter((c) => c < o), o]) {
    slices.push(all.subarray(from, to));
    from = to;
  }
  return { slices: slices.filter((s) => s.length > 0), bytes: o };
}

/** Sends each slice on its own connection; resolves when every slice is handed to the kernel. */
async function send(port: number, slices: Buffer[]): Promise<void> {
  await Promise.all(
    slices.map(
      (slice) =>
        new Promise<void>((resolve, reject) => {
          const s = connect({ port, host: '127.0.0.1' }, () => s.end(slice));
          s.on('error', reject);
          s.on('close', () => resolve());
          s.resume();
        }),
    ),
  );
}

/** Raw reference: writes what each connection sends to its own file; `fsync` mode syncs per record. */
const SINK = `
const net = require('node:net'); const fs = require('node:fs'); const path = require('node:path');
const [dir, port, expect, mode, maxMs] = process.argv.slice(1);
let ended = 0, records = 0, first = 0, n = 0, stopped = false;
const finish = () => { if (stopped) return; stopped = true; process.stdout.write('done ' + records + ' ' + (Date.now() - first) + '\\n'); };
const srv = net.createServer((s) => {
  if (!first) first = Date.now();
  const file = path.join(dir, 'conn-' + (n++));
  if (mode === 'raw') {
    // As fast as node writes bytes to a file: everything received meanwhile goes out in one writev.
    const fd = fs.openSync(file, 'w');
    let queue = [], queued = 0, busy = false, done = false;
    const pump = () => {
      if (busy) return;
      if (queue.length === 0) { if (done) { fs.closeSync(fd); if (++ended === Number(expect)) finish(); } return; }
      const bufs = queue; queue = []; queued = 0; busy = true;
      fs.writev(fd, bufs, (err) => { if (err) throw err; busy = false; if (s.isPaused() && !done) s.resume(); pump(); });
    };
    s.on('data', (chunk) => { queue.push(chunk); queued += chunk.length; if (queued > 1048576) s.pause(); pump(); });
    s.on('end', () => { done = true; pump(); });
    s.on('error', () => {});
    return;
  }
  // One write + fdatasync per record, records of a connection in order (OK Log's durable mode).
  const fd = fs.openSync(file, 'w');
  let tail = Buffer.alloc(0), busy = false, done = false;
  const queue = [];
  const pump = () => {
    if (busy) return;
    const rec = queue.shift();
    if (!rec) { if (done) { fs.closeSync(fd); if (++ended === Number(expect)) finish(); } else s.resume(); return; }
    busy = true;
    fs.write(fd, rec, (err) => { if (err) throw err; fs.fdatasync(fd, (err2) => { if (err2) throw err2; records++; busy = false; if (Date.now() - first > Number(maxMs)) { finish(); s.destroy(); return; } pump(); }); });
  };
  s.on('data', (chunk) => {
    s.pause();
    let buf = Buffer.concat([tail, chunk]), p = 0, i;
    while ((i = buf.indexOf(10, p)) >= 0) { queue.push(buf.subarray(p, i + 1)); p = i + 1; }
    tail = buf.subarray(p);
    pump();
  });
  s.on('end', () => { done = true; pump(); });
  s.on('error', () => {});
});
srv.listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\\n'));
`;

async function reference(
  dir: string,
  slices: Buffer[],
  mode: 'raw' | 'fsync',
): Promise<{ seconds: number; records: number }> {
  const port = await freePort();
  const sink: ChildProcess = spawn(
    process.execPath,
    ['-e', SINK, dir, String(port), String(slices.length), mode, String(FSYNC_REF_MAX_MS)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  sink.stdout?.on('data', (d) => {
    out += d;
  });
  try {
    await waitFor(() => out.includes('ready'), 'reference sink');
    // Timed as oklog is: from before connecting until the end is seen from here.
    const started = process.hrtime.bigint();
    await send(port, slices).catch(() => {}); // the fsync reference cuts connections at its deadline
    const m = (await waitFor(() => /done (\d+) (\d+)/.exec(out), 'reference sink to finish', 120_000, 5))!;
    const seconds = mode === 'raw' ? Number(process.hrtime.bigint() - started) / 1e9 : Number(m[2]) / 1000;
    return { records: Number(m[1]), seconds };
  } finally {
    sink.kill('SIGKILL');
  }
}

/**
 * The reference DESIGN.md §8 names: `socat` at its defaults into a file (one forked socat per
 * connection, each appending to the same file), timed until the file holds every byte sent.
 * Null when socat is not installed (`apt-get install socat`).
 */
async function socatReference(dir: string, slices: Buffer[]): Promise<number | null> {
  const file = join(dir, 'all');
  const port = await freePort();
  const sink = spawn(
    'socat',
    ['-u', `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `OPEN:${file},creat,append`],
    {
      stdio: 'ignore',
      detached: true, // its forked children are stopped with it, as a process group
    },
  );
  const missing = new Promise<null>((resolve) => sink.once('error', () => resolve(null)));
  try {
    const up = await Promise.race([
      missing,
      waitFor(
        () =>
          new Promise<boolean>((resolve) => {
            const c = connect({ port, host: '127.0.0.1' }, () => {
              c.destroy();
              resolve(true);
            });
            c.on('error', () => resolve(false));
          }),
        'socat to listen',
      ),
    ]);
    if (up === null) return null;
    await waitFor(async () => (await stat(file).catch(() => null)) !== null, 'socat file');
    const base = (await stat(file)).size;
    const bytes = slices.reduce((n, b) => n + b.length, 0);
    const started = process.hrtime.bigint();
    await send(port, slices);
    await waitFor(
      async () => (await stat(file)).size - base >= bytes,
      'socat to write every byte',
      120_000,
      2,
    );
    return Number(process.hrtime.bigint() - started) / 1e9;
  } finally {
    if (sink.pid !== undefined) {
      try {
        process.kill(-sink.pid, 'SIGKILL');
      } catch {}
    }
  }
}

async function written(api: string): Promise<number> {
  const r = await fetch(`${api}/ingest/stats`);
  return ((await r.json()) as { written: { records: number } }).written.records;
}

/** Sends the slices to an oklog port; seconds until the node reports every record written. */
async function oklogRun(api: string, port: number, slices: Buffer[], records: number): Promise<number> {
  const base = await written(api);
  const started = process.hrtime.bigint();
  await send(port, slices);
  await waitFor(
    async () => (await written(api)) - base >= records,
    'oklog to write every record',
    120_000,
    5,
  );
  return Number(process.hrtime.bigint() - started) / 1e9;
}

const fmt = (n: number) => Math.round(n).toLocaleString('en');

/**
 * Every timed run starts from the same state: the dirty pages of the runs before (each writes
 * 143 MiB) written back first (`sync`), so that no run pays for another's writeback.
 */
async function settle(): Promise<void> {
  execFileSync('sync');
  await new Promise((res) => setTimeout(res, 100));
}

export async function run(): Promise<string> {
  const log = (s: string) => process.stderr.write(`ingest bench: ${s}\n`);
  return withTempDir('oklog-bench-ingest-', async (tmp) => {
    log(`generating ${fmt(RECORDS)} records`);
    const fast = generate(RECORDS, CONNS);
    const durable = generate(DURABLE_RECORDS, CONNS);
    const mib = fast.bytes / 2 ** 20;
    const node = await startOklog('ingest', ['-ingest.path', join(tmp.path, 'ingest')], { launcher: true });
    return withNode(node, async () => {
      let bestRaw = Number.POSITIVE_INFINITY;
      let bestSocat: number | null = Number.POSITIVE_INFINITY;
      let bestFast = Number.POSITIVE_INFINITY;
      for (let r = 0; r < ROUNDS; r++) {
        const refDir = await tempDir('oklog-bench-ref-');
        try {
          await settle();
          const ref = await reference(refDir.path, fast.slices, 'raw');
          bestRaw = Math.min(bestRaw, ref.seconds);
          if (bestSocat !== null) {
            await settle();
            const s = await socatReference(refDir.path, fast.slices);
            bestSocat = s === null ? null : Math.min(bestSocat, s);
          }
        } finally {
          await refDir.cleanup();
        }
        await settle();
        const s = await oklogRun(node.api, node.ports.fast, fast.slices, RECORDS);
        bestFast = Math.min(bestFast, s);
        log(
          `round ${r + 1}: raw ${bestRaw.toFixed(3)} s, socat ${bestSocat?.toFixed(3)} s, oklog fast ${s.toFixed(3)} s`,
        );
      }
      let bestFsync = 0;
      let bestDurable = Number.POSITIVE_INFINITY;
      for (let r = 0; r < Math.min(ROUNDS, 2); r++) {
        const refDir = await tempDir('oklog-bench-ref-');
        try {
          const ref = await reference(refDir.path, durable.slices, 'fsync');
          bestFsync = Math.max(bestFsync, ref.records / ref.seconds);
        } finally {
          await refDir.cleanup();
        }
        const s = await oklogRun(node.api, node.ports.durable, durable.slices, DURABLE_RECORDS);
        bestDurable = Math.min(bestDurable, s);
        log(`durable round ${r + 1}: fsync/record ${fmt(bestFsync)} rec/s, oklog durable ${s.toFixed(3)} s`);
      }
      const rss = (await memoryMiB(node.proc.pid)).hwm;
      const rawRate = RECORDS / bestRaw;
      const fastRate = RECORDS / bestFast;
      const durableRate = DURABLE_RECORDS / bestDurable;
      const ratio = fastRate / rawRate;
      const socatRate = bestSocat === null ? null : RECORDS / bestSocat;
      const socatRatio = socatRate === null ? null : fastRate / socatRate;
      const dRatio = durableRate / bestFsync;
      const ok = (b: boolean) => (b ? 'met' : '**missed**');
      return [
        '## Ingest (issue 2): fast and durable TCP ingest into one `oklog ingest`',
        '',
        `${fmt(RECORDS)} records of 100–200 B (${mib.toFixed(0)} MiB) for fast mode and ${fmt(DURABLE_RECORDS)} for durable mode, sent over ${CONNS} parallel connections from the benchmark process; one \`oklog ingest\` node at default settings on the real filesystem. Best of ${ROUNDS} rounds (durable: ${Math.min(ROUNDS, 2)}), alternating with the references, each fast-mode run after a \`sync\` (no run pays for another's writeback). Both are timed from this process, from before connecting until the end is seen: oklog's when \`/ingest/stats\` reports every record written to its segment files, the raw sink's when it reports every connection written and closed.`,
        '',
        '| measure | oklog | reference | ratio | target |',
        '| --- | --- | --- | --- | --- |',
        `| fast mode | ${fmt(fastRate)} rec/s, ${(mib / bestFast).toFixed(0)} MiB/s | raw TCP→file (node sink: one file per connection, one writev per batch): ${fmt(rawRate)} rec/s, ${(mib / bestRaw).toFixed(0)} MiB/s | ${(ratio * 100).toFixed(0)}% | ≥ 60% (${ok(ratio >= 0.6)}) |`,
        socatRate === null || socatRatio === null
          ? '| fast mode, against `socat` | | `socat` is not installed (`apt-get install socat`): not measured | | |'
          : `| fast mode, against \`socat\` | (as above) | \`socat -u TCP-LISTEN:…,fork OPEN:file,creat,append\` at its defaults, as DESIGN.md §8 names it: ${fmt(socatRate)} rec/s, ${(mib / bestSocat!).toFixed(0)} MiB/s | ${(socatRatio * 100).toFixed(0)}% | ≥ 60% (${ok(socatRatio >= 0.6)}) |`,
        `| durable mode (group commit) | ${fmt(durableRate)} rec/s | one write + fdatasync per record, ${CONNS} connections in parallel: ${fmt(bestFsync)} rec/s | ${dRatio.toFixed(0)}× | ≥ 20× (${ok(dRatio >= 20)}) |`,
        `| node peak RSS (VmHWM, whole run) | ${rss.toFixed(0)} MiB | | | < 300 MiB (${ok(rss < 300)}) |`,
      ].join('\n');
    });
  });
}

runIfMain(import.meta.url, run);
