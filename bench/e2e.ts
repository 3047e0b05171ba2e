// End-to-end benchmark (issue 3): 2M records of 100–200 B (1% carry a marker) forwarded with
// `oklog forward` into one ingeststore at default settings, timed until all are queryable; a
// full-scan marker query against `grep -F -c` over the same stored records; a full export; the
// latency of one forwarded record; and the node's peak RSS. The raw reference is the same bytes
// sent over TCP to a process that only writes them to a file, in the same run.
import { execFile, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, spawnTs, startOklog, waitFor } from '../test/helpers/index.ts';
import { memoryMiB, runIfMain, withNode, withTempDir } from './lib.ts';

const execFileP = promisify(execFile);
const RECORDS = Number(process.env.BENCH_E2E_RECORDS ?? 2_000_000);
/** Pipeline rounds (each: raw reference, then a fresh node): the spread is part of the result. */
const ROUNDS = Math.max(1, Number(process.env.BENCH_E2E_ROUNDS ?? 3));
const MARKER = 'ZQXMARKERQZX';
const ALNUM = 'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ';

/** Writes RECORDS lines of 100–200 bytes (newline included) to `path`; 1% contain MARKER. */
async function generate(path: string): Promise<{ bytes: number; markers: number }> {
  const out = createWriteStream(path);
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  let bytes = 0;
  let markers = 0;
  const chunk: string[] = [];
  for (let i = 0; i < RECORDS; i++) {
    const len = 100 + (rand() % 101) - 1; // payload without newline: 99..199
    let s = `${new Date(1_700_000_000_000 + i).toISOString()} svc=${i % 97} req=${i} `;
    if (i % 100 === 7) {
      s += `${MARKER} `;
      markers++;
    }
    while (s.length < len) s += ALNUM[rand() % ALNUM.length];
    s = s.slice(0, len);
    chunk.push(s);
    bytes += s.length + 1;
    if (chunk.length === 10_000) {
      if (!out.write(`${chunk.join('\n')}\n`)) await new Promise<void>((r) => out.once('drain', () => r()));
      chunk.length = 0;
    }
  }
  if (chunk.length) out.write(`${chunk.join('\n')}\n`);
  await new Promise<void>((r, j) => out.end((err?: Error | null) => (err ? j(err) : r())));
  return { bytes, markers };
}

/** Raw reference: a node process that writes whatever arrives on a TCP port to a file. */
const RAW_SINK = `
const net = require('node:net'); const fs = require('node:fs');
const out = fs.createWriteStream(process.argv[1]);
const srv = net.createServer((s) => { s.pipe(out, { end: false }); s.on('end', () => out.end(() => { process.stdout.write('done\\n'); process.exit(0); })); });
srv.listen(Number(process.argv[2]), '127.0.0.1', () => process.stdout.write('ready\\n'));
`;

async function rawReference(input: string, dir: string): Promise<number> {
  const port = await freePort();
  const sink = spawn(process.execPath, ['-e', RAW_SINK, join(dir, 'raw.out'), String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  sink.stdout.on('data', (d) => {
    out += d;
  });
  await waitFor(() => out.includes('ready'), 'raw sink');
  const started = process.hrtime.bigint();
  const send = spawn('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}; cat "${input}" >&3; exec 3>&-`], {
    stdio: 'inherit',
  });
  await new Promise((r) => send.on('exit', r));
  await waitFor(() => out.includes('done'), 'raw sink to finish', 120_000);
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function queryCount(
  api: string,
  params: Record<string, string>,
): Promise<{ lines: number; bytes: number; seconds: number }> {
  const qs = new URLSearchParams(params).toString();
  const started = process.hrtime.bigint();
  const res = await fetch(`${api}/store/query?${qs}`);
  if (!res.ok || !res.body) throw new Error(`query failed: ${res.status}`);
  let lines = 0;
  let bytes = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    bytes += chunk.length;
    const b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    for (let i = b.indexOf(0x0a); i >= 0; i = b.indexOf(0x0a, i + 1)) lines++;
  }
  return { lines, bytes, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

async function headMatched(api: string): Promise<number> {
  const res = await fetch(`${api}/store/query?from=2000-01-01T00:00:00Z&to=now`, { method: 'HEAD' });
  return Number(res.headers.get('x-oklog-records-matched') ?? -1);
}

/**
 * True once the ingester has written `records` and holds no segment any more: every one was
 * committed, which a consumer does only after the store answered its replication, so every record
 * is queryable. Cheap to poll, unlike a query, which would scan the data and compete with the
 * pipeline being measured (the count is checked with a query afterwards).
 */
async function allCommitted(api: string, records: number): Promise<boolean> {
  const s = (await (await fetch(`${api}/ingest/stats`)).json()) as {
    segments: Record<'active' | 'flushed' | 'pending', { count: number }>;
    written: { records: number };
  };
  const { active, flushed, pending } = s.segments;
  return s.written.records >= records && active.count + flushed.count + pending.count === 0;
}

export async function run(): Promise<string> {
  return withTempDir('oklog-bench-e2e-', async (tmp) => {
    const input = join(tmp.path, 'input.log');
    process.stderr.write(`generating ${RECORDS} records...\n`);
    const { bytes, markers } = await generate(input);
    const mib = bytes / 2 ** 20;

    const rounds: { rawSec: number; e2eSec: number; forwardedSec: number }[] = [];
    let node: Awaited<ReturnType<typeof startOklog>> | null = null;
    for (let r = 0; r < ROUNDS; r++) {
      process.stderr.write(`round ${r + 1}: raw reference...\n`);
      const rawSec = await rawReference(input, tmp.path);
      process.stderr.write(`round ${r + 1}: ingeststore + forward...\n`);
      await node?.proc.kill('SIGTERM');
      const dir = join(tmp.path, `round-${r}`);
      // Node and forwarder are started with the `oklog` command, as users run them.
      node = await startOklog(
        'ingeststore',
        ['-ingest.path', join(dir, 'ingest'), '-store.path', join(dir, 'store')],
        { launcher: true },
      );
      const started = Date.now();
      // `oklog forward < input.log`: the forwarder reads the file itself, as `cat` does for raw.
      const fh = await open(input);
      const fwd = spawnTs('cli/oklog.js', ['forward', `127.0.0.1:${node.ports.fast}`], { stdin: fh.fd });
      await fwd.exited;
      await fh.close();
      const forwardedSec = (Date.now() - started) / 1000;
      await waitFor(() => allCommitted(node!.api, RECORDS), 'all records committed', 600_000, 50);
      const e2eSec = (Date.now() - started) / 1000;
      const stored = await headMatched(node.api);
      if (stored !== RECORDS) throw new Error(`${stored} records queryable after the run, not ${RECORDS}`);
      rounds.push({ rawSec, e2eSec, forwardedSec });
    }
    if (node === null) throw new Error('no round ran');
    const ratios = rounds.map((x) => x.rawSec / x.e2eSec);
    const median = [...ratios].sort((a, b) => a - b)[Math.floor(ratios.length / 2)];
    return withNode(node, async () => {
      // Latency of a single record at default settings, through a forwarder that stays connected
      // (as `app | oklog forward` does): the ingester's flush age, then the consumer's gather.
      const one = spawnTs('cli/oklog.js', ['forward', `127.0.0.1:${node.ports.fast}`], { stdin: 'pipe' });
      await waitFor(() => one.stderr().includes('connected'), 'probe forwarder connected', 30_000);
      const tag = `LATENCYPROBE${Date.now()}`;
      const t0 = Date.now();
      one.child.stdin!.write(`${tag}\n`);
      const since = new Date(t0 - 1000).toISOString();
      await waitFor(
        async () =>
          (await queryCount(node.api, { from: since, to: 'now', q: tag }).catch(() => ({ lines: 0 })))
            .lines === 1,
        'probe queryable',
        60_000,
        100,
      );
      const latencySec = (Date.now() - t0) / 1000;
      one.child.stdin!.end();
      await one.exited;

      // Full-scan query vs grep over the same stored records (files are in the OS cache after the export).
      const from = '2000-01-01T00:00:00Z';
      const exp = await queryCount(node.api, { from, to: 'now' });
      // Best of three for both the query and grep: the first of each may pay for cold caches.
      let q = await queryCount(node.api, { from, to: 'now', q: MARKER });
      for (let i = 0; i < 2; i++) {
        const again = await queryCount(node.api, { from, to: 'now', q: MARKER });
        if (again.seconds < q.seconds) q = again;
      }
      const storeDir = join(tmp.path, `round-${ROUNDS - 1}`, 'store');
      const files = (await readdir(storeDir))
        .filter((f) => f.endsWith('.flushed'))
        .map((f) => join(storeDir, f));
      let storedBytes = 0;
      for (const f of files) storedBytes += (await stat(f)).size;
      let grepSec = Number.POSITIVE_INFINITY;
      let grep = { stdout: '' };
      for (let i = 0; i < 3; i++) {
        const g0 = process.hrtime.bigint();
        grep = await execFileP('grep', ['-F', '-c', '-h', MARKER, ...files], { maxBuffer: 1 << 24 });
        grepSec = Math.min(grepSec, Number(process.hrtime.bigint() - g0) / 1e9);
      }
      const grepCount = grep.stdout
        .trim()
        .split('\n')
        .reduce((a, l) => a + Number(l), 0);
      const rssMiB = (await memoryMiB(node.proc.pid)).hwm;

      const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
      return [
        '## End to end (issue 3): forward → ingeststore → query',
        '',
        `${RECORDS.toLocaleString('en')} records, ${mib.toFixed(0)} MiB (100–200 B each, ${markers} carry the marker), one ingeststore at default settings, \`oklog forward\` over the fast port.`,
        '',
        '| measure | oklog | reference | ratio | target |',
        '| --- | --- | --- | --- | --- |',
        ...rounds.map(
          (x, i) =>
            `| round ${i + 1}: forward until all queryable | ${x.e2eSec.toFixed(1)} s, ${Math.round(RECORDS / x.e2eSec).toLocaleString('en')} rec/s, ${(mib / x.e2eSec).toFixed(1)} MiB/s (stdin drained in ${x.forwardedSec.toFixed(1)} s) | raw TCP→file ${x.rawSec.toFixed(2)} s, ${Math.round(RECORDS / x.rawSec).toLocaleString('en')} rec/s | ${pct(ratios[i])} | ≥ 20% |`,
        ),
        `| end to end, median of ${ROUNDS} rounds | | | ${pct(median)} | ≥ 20% |`,
        `| full-scan marker query (${q.lines} matches), best of 3 | ${q.seconds.toFixed(3)} s | \`grep -F -c\` best of 3 ${grepSec.toFixed(3)} s (${grepCount} matches) over ${(storedBytes / 2 ** 20).toFixed(0)} MiB stored | ${pct(grepSec / q.seconds)} of grep's speed | ≥ 50% |`,
        `| full export | ${exp.seconds.toFixed(2)} s, ${exp.lines.toLocaleString('en')} records, ${(exp.bytes / 2 ** 20 / exp.seconds).toFixed(0)} MiB/s | | | |`,
        `| latency of one record through a connected forwarder | ${latencySec.toFixed(2)} s | | | ≤ 5 s |`,
        `| ingeststore peak RSS (VmHWM) | ${rssMiB.toFixed(0)} MiB | | | < 300 MiB |`,
        '',
        `Correctness in the same run: export returned ${exp.lines} of ${RECORDS + 1} records (the ${RECORDS.toLocaleString('en')} forwarded plus the latency probe); the marker query returned ${q.lines} of ${markers}.`,
      ].join('\n');
    });
  });
}

runIfMain(import.meta.url, run);
