// One small cluster of real processes — `oklog ingest` and three `oklog store` nodes on their own
// loopback addresses (127.0.0.21–24), gossip encrypted with `-cluster.key` files in both forms
// (base64 lines, JSON array) — checked from the outside, in one run to keep the time down:
//   - a node with another key does not get in (and is never listed by the others);
//   - records forwarded to the ingest node arrive exactly once on `/store/stream` opened at a
//     store node (each record is on two of the three stores, the stream dedupes the copies);
//   - `oklogctl peers` and `oklogctl stats` (the real commands) from one address: members and
//     types, the ingest node's segments and records, each store's segments and record times,
//     table and `-o json`, exit 0;
//   - SIGTERM on a store node: its peers record it as left (not dead) within a few seconds;
//   - kill -9 on another: `oklogctl stats` at once names it as not answering and exits non-zero.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { numberedLines, run } from '../cli/helpers.ts';
import { sleep, waitFor } from '../helpers/index.ts';
import { type Peer, ProcCluster, type ProcNode, peersOf } from './procs.ts';

const N = 3000;
const LEFT_WITHIN_MS = 3000;

let procs: ProcCluster;
const t0 = Date.now();

async function metric(n: ProcNode, re: RegExp): Promise<number> {
  const text = await (await fetch(`http://${n.api}/metrics`)).text();
  const m = re.exec(text);
  return m ? Number(m[1]) : 0;
}

/** `oklogctl` as users run it (the bundled launcher). */
const ctl = (args: string[]) => run('cli/oklogctl.js', args, { timeoutMs: 30_000 });

let ingest: ProcNode;
let store1: ProcNode;
let store2: ProcNode;
let store3: ProcNode;
let intruder: ProcNode;

before(async () => {
  procs = await ProcCluster.create('oklog-processes-');
  const { dir } = procs;
  const key = randomBytes(32).toString('base64');
  const lines = join(dir, 'key.lines');
  const json = join(dir, 'key.json');
  const other = join(dir, 'other.key');
  await writeFile(lines, `# oklog gossip key (primary first)\n\n${key}\n`);
  await writeFile(json, `${JSON.stringify([key])}\n`);
  await writeFile(other, `${randomBytes(32).toString('base64')}\n`);
  ingest = await procs.start('ingest', 'ingest', '127.0.0.21', { keyFile: lines });
  [store1, store2, store3, intruder] = await Promise.all([
    procs.start('store1', 'store', '127.0.0.22', { keyFile: json, seed: ingest }),
    procs.start('store2', 'store', '127.0.0.23', { keyFile: lines, seed: ingest }),
    procs.start('store3', 'store', '127.0.0.24', { keyFile: json, seed: ingest }),
    procs.start('intruder', 'store', '127.0.0.25', { keyFile: other, seed: ingest }),
  ]);
});

after(() => procs?.stop());

test('a real encrypted cluster: key files, stream exactly once, oklogctl peers/stats, leave and a dead store', async (t) => {
  const members = [ingest, store1, store2, store3];
  const expected = members.map((n) => `${n.mode} ${n.api}`).sort();

  // --- key files: the four with the same key (both file forms) converge; the intruder never joins.
  const intruderName = ((await peersOf(intruder))[0] as Peer).name;
  await waitFor(
    async () => {
      for (const n of members) {
        const seen = await peersOf(n);
        assert.ok(!seen.some((p) => p.name === intruderName), `${n.label} lists the intruder`);
        if (JSON.stringify(seen.map((p) => `${p.type} ${p.apiAddr}`).sort()) !== JSON.stringify(expected))
          return false;
      }
      return true;
    },
    'the four nodes with the key see each other',
    30_000,
    100,
  ).catch((err) => {
    throw procs.withLogs(err);
  });
  await sleep(1000); // the intruder keeps retrying its seed meanwhile
  for (const n of members) assert.ok(!(await peersOf(n)).some((p) => p.name === intruderName));
  assert.equal((await peersOf(intruder)).length, 1, 'the intruder is alone');
  assert.ok((await metric(ingest, /^oklog_cluster_dropped_packets_total\{reason="decrypt"\} (\d+)$/m)) > 0);
  await intruder.proc.kill('SIGKILL');

  // --- a stream opened at store1 before the records are forwarded: every record exactly once.
  const streamAbort = new AbortController();
  const stream = await fetch(`http://${store1.api}/store/stream?q=`, { signal: streamAbort.signal });
  procs.cleanups.push(async () => streamAbort.abort());
  assert.equal(stream.status, 200);
  const received: string[] = [];
  const reading = (async () => {
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of stream.body as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        const parts = buf.split('\n');
        buf = parts.pop() ?? '';
        received.push(...parts);
      }
    } catch {
      // aborted at the end of the test
    }
  })();
  // The stream is live once store1 has a `_stream` subscriber on each of the three stores.
  await waitFor(
    async () => {
      for (const s of [store1, store2, store3])
        if ((await metric(s, /^oklog_store_stream_subscribers (\d+)$/m)) < 1) return false;
      return true;
    },
    'the stream connected to every store node',
    10_000,
    50,
  );
  const fwd = await run('cli/oklog.ts', ['forward', `${ingest.host}:${ingest.fast}`], {
    input: numberedLines(N),
    timeoutMs: 60_000,
  });
  assert.equal(fwd.code, 0, `oklog forward: ${fwd.stderr}`);
  await waitFor(() => new Set(received).size >= N, `${N} records on the stream`, 30_000, 100).catch((err) => {
    throw procs.withLogs(new Error(`${(err as Error).message} (got ${received.length})`));
  });
  await sleep(4000); // longer than the 3 s window: a late duplicate would show up by now
  const numbers = received.map((l) => {
    const m = /^[0-9A-Z]{26} default line-(\d{7}) payload$/.exec(l);
    assert.ok(m, `unexpected stream line ${JSON.stringify(l)}`);
    return Number(m[1]);
  });
  assert.equal(numbers.length, N, `${numbers.length} stream lines for ${N} records`);
  assert.deepEqual(
    [...numbers].sort((a, b) => a - b),
    Array.from({ length: N }, (_, i) => i + 1),
  );
  t.diagnostic(`stream: ${N} records exactly once`);

  // --- oklogctl peers, from one store node.
  const peersTable = await ctl(['peers', '-store', store2.api]);
  assert.equal(peersTable.code, 0, peersTable.stderr);
  const rows = peersTable.stdout.trim().split('\n');
  assert.match(rows[0], /^NAME\s+TYPE\s+API\s+GOSSIP\s+STATE$/);
  assert.deepEqual(
    rows
      .slice(1)
      .map((r) => r.split(/\s+/))
      .map(([, type, apiAddr, gossip, state]) => `${type} ${apiAddr} ${gossip.split(':')[0]} ${state}`)
      .sort(),
    members.map((n) => `${n.mode} ${n.api} ${n.host} alive`).sort(),
  );
  const peersJson = await ctl(['peers', '-store', store2.api, '-o', 'json']);
  assert.equal(peersJson.code, 0);
  const list = JSON.parse(peersJson.stdout) as Peer[];
  assert.deepEqual(list.map((p) => `${p.type} ${p.apiAddr}`).sort(), expected);
  assert.ok(list.every((p) => /^[0-9a-f-]{36}$/.test(p.name) && p.state === 'alive'));

  // --- oklogctl stats, from the ingest node: once every store holds its copies.
  await waitFor(
    async () => {
      const r = await ctl(['stats', '-store', ingest.api, '-o', 'json']);
      const j = JSON.parse(r.stdout);
      return (
        r.code === 0 &&
        j.ingest[0].stats.segments.flushed.count === 0 &&
        j.ingest[0].stats.segments.pending.count === 0
      );
    },
    'the ingest node consumed',
    30_000,
    500,
  );
  const statsJson = await ctl(['stats', '-store', ingest.api, '-o', 'json']);
  assert.equal(statsJson.code, 0, statsJson.stderr);
  const s = JSON.parse(statsJson.stdout);
  assert.equal(s.peers, 4);
  assert.equal(s.allStoreNodesAnswered, true);
  assert.equal(s.allIngestNodesAnswered, true);
  assert.deepEqual(
    s.ingest.map((n: { apiAddr: string; ok: boolean }) => [n.apiAddr, n.ok]),
    [[ingest.api, true]],
  );
  assert.equal(s.ingest[0].stats.written.records, N);
  assert.ok(s.ingest[0].stats.written.bytes >= N * 'line-0000001 payload'.length);
  assert.deepEqual(
    s.store.map((n: { apiAddr: string }) => n.apiAddr).sort(),
    [store1.api, store2.api, store3.api].sort(),
  );
  let segments = 0;
  for (const st of s.store) {
    assert.equal(st.ok, true);
    segments += st.stats.segments.count;
    if (st.stats.segments.count === 0) continue;
    for (const time of [st.stats.oldestRecord, st.stats.newestRecord]) {
      const ms = Date.parse(time);
      assert.ok(ms >= t0 - 1000 && ms <= Date.now(), `record time ${time} within the test`);
    }
    assert.ok(st.stats.oldestRecord <= st.stats.newestRecord);
  }
  assert.ok(segments >= 2, `${segments} store segments (replication factor 2)`);
  const statsTable = await ctl(['stats', '-store', ingest.api]);
  assert.equal(statsTable.code, 0);
  assert.match(statsTable.stdout, /^INGEST NODES \(1\)\n/);
  assert.match(
    statsTable.stdout,
    new RegExp(`\\n\\S+\\s+${ingest.api.replace(/\./g, '\\.')}\\s+\\d+/\\d+/\\d+\\s+.*\\s${N} / .*\\sok\\n`),
  );
  assert.match(statsTable.stdout, /STORE NODES \(3\)\n/);
  assert.match(statsTable.stdout, /\nstore nodes answered: 3\/3\n$/);
  assert.equal(statsTable.stderr, '');

  // --- SIGTERM: a graceful leave, recorded as left (not dead) by every peer, quickly.
  const store3Name = list.find((p) => p.apiAddr === store3.api)?.name;
  const termAt = performance.now();
  const exited = store3.proc.kill('SIGTERM');
  const survivors = [ingest, store1, store2];
  await waitFor(
    async () => {
      for (const n of survivors) {
        if ((await metric(n, /^oklog_cluster_members\{state="left"\} (\d+)$/m)) !== 1) return false;
      }
      return true;
    },
    'store3 recorded as left',
    LEFT_WITHIN_MS,
    20,
  );
  const leftAfter = performance.now() - termAt;
  t.diagnostic(`store3 left everywhere ${Math.round(leftAfter)} ms after SIGTERM`);
  for (const n of survivors) {
    assert.equal(
      await metric(n, /^oklog_cluster_members\{state="dead"\} (\d+)$/m),
      0,
      `${n.label}: not dead`,
    );
    assert.ok(!(await peersOf(n)).some((p) => p.name === store3Name));
  }
  assert.equal(await exited, 0, 'a graceful shutdown exits 0');

  // --- kill -9 store2; at once, before gossip declares it dead, stats names it and exits non-zero.
  const store2Name = list.find((p) => p.apiAddr === store2.api)?.name;
  assert.equal(await store2.proc.kill('SIGKILL'), 'SIGKILL');
  const down = await ctl(['stats', '-store', ingest.api, '-timeout', '1s']);
  const stillListed = (await peersOf(ingest)).some((p) => p.name === store2Name);
  assert.ok(stillListed, 'the check ran while store2 was still a member');
  assert.equal(down.code, 3, down.stderr);
  assert.match(down.stdout, /STORE NODES \(2\)\n/);
  assert.match(
    down.stdout,
    new RegExp(`\\n${store2Name}\\s+${store2.api.replace(/\./g, '\\.')}\\s+.*ERROR: `),
  );
  assert.match(down.stdout, /\nstore nodes answered: 1\/2 \(INCOMPLETE\)\n$/);
  assert.match(
    down.stderr,
    new RegExp(`store node ${store2Name} \\(${store2.api.replace(/\./g, '\\.')}\\) did not answer`),
  );
  const downJson = await ctl(['stats', '-store', ingest.api, '-timeout', '1s', '-o', 'json']);
  if ((await peersOf(ingest)).some((p) => p.name === store2Name)) {
    assert.equal(downJson.code, 3);
    const j = JSON.parse(downJson.stdout);
    assert.equal(j.allStoreNodesAnswered, false);
    assert.equal(j.store.find((n: { name: string }) => n.name === store2Name).ok, false);
    assert.equal(j.store.find((n: { apiAddr: string }) => n.apiAddr === store1.api).ok, true);
  }

  streamAbort.abort();
  await reading;
});
