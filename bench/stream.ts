// Memory while streaming a 1 GiB query result (DESIGN.md §8: node RSS under 300 MiB while
// streaming a 1 GiB result). Eight 128 MiB store segments are written straight into a store
// directory (named LOW-HIGH.flushed, as replication would leave them), one `oklog store` serves
// them, and a client reads the whole range as fast as it can while the node's RSS is sampled.
// The reference is the same bytes read from the files with `cat` into /dev/null.
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startOklog, waitFor } from '../test/helpers/index.ts';
import { line, segmentStoreFlags, T0, ulidAt } from '../test/store/helpers.ts';
import { memoryMiB, runIfMain, withNode, withTempDir } from './lib.ts';

const execFileP = promisify(execFile);
const SEGMENTS = Number(process.env.BENCH_STREAM_SEGMENTS ?? 8);
const SEGMENT_BYTES = 128 * 2 ** 20;
const LINE = 200;

export async function run(): Promise<string> {
  return withTempDir('oklog-bench-stream-', async (tmp) => {
    const dir = join(tmp.path, 'store');
    await execFileP('mkdir', ['-p', dir]);
    const perSeg = Math.floor(SEGMENT_BYTES / LINE);
    const pad = 'p'.repeat(LINE - line(T0, 0, ' 0000000000').length);
    const files: string[] = [];
    for (let s = 0; s < SEGMENTS; s++) {
      const buf = Buffer.allocUnsafe(perSeg * LINE);
      for (let i = 0; i < perSeg; i++) {
        const n = s * perSeg + i;
        buf.write(line(T0 + n, 0, `${pad} ${String(n).padStart(10, '0')}`), i * LINE, 'latin1');
      }
      const f = join(dir, `${ulidAt(T0 + s * perSeg)}-${ulidAt(T0 + s * perSeg + perSeg - 1)}.flushed`);
      await writeFile(f, buf);
      files.push(f);
    }
    const total = SEGMENTS * perSeg * LINE;
    const c0 = process.hrtime.bigint();
    await execFileP('sh', ['-c', `cat ${files.join(' ')} > /dev/null`]);
    const catSec = Number(process.hrtime.bigint() - c0) / 1e9;

    const node = await startOklog('store', segmentStoreFlags(dir), { launcher: true });
    return withNode(node, async () => {
      const from = new Date(T0).toISOString();
      const to = new Date(T0 + SEGMENTS * perSeg).toISOString();
      const url = `${node.api}/store/query?from=${from}&to=${to}`;
      await waitFor(
        async () => (await fetch(`${node.api}/store/query?from=${from}&to=${from}`, { method: 'HEAD' })).ok,
        'store peer known',
      );
      const before = await memoryMiB(node.proc.pid);
      let peak = before.rss;
      const poll = setInterval(() => {
        memoryMiB(node.proc.pid).then(
          (m) => {
            peak = Math.max(peak, m.rss);
          },
          () => {},
        );
      }, 20);
      const t0 = process.hrtime.bigint();
      let bytes = 0;
      try {
        await new Promise<void>((resolve, reject) => {
          request(url, (res) => {
            res.on('data', (d: Buffer) => {
              bytes += d.length;
            });
            res.on('end', resolve);
            res.on('error', reject);
          })
            .on('error', reject)
            .end();
        });
      } finally {
        clearInterval(poll);
      }
      const sec = Number(process.hrtime.bigint() - t0) / 1e9;
      const after = await memoryMiB(node.proc.pid);
      peak = Math.max(peak, after.hwm);
      if (bytes !== total) throw new Error(`streamed ${bytes} bytes of ${total}`);
      const gib = total / 2 ** 30;
      return [
        '## Streaming a large result (issue 3, memory)',
        '',
        `${SEGMENTS} store segments of 128 MiB (${gib.toFixed(2)} GiB, ${(SEGMENTS * perSeg).toLocaleString('en')} records of ${LINE} B) served by one \`oklog store\`; one client reads the whole range.`,
        '',
        '| measure | oklog | reference | target |',
        '| --- | --- | --- | --- |',
        `| stream ${gib.toFixed(2)} GiB | ${sec.toFixed(2)} s, ${(total / 2 ** 20 / sec).toFixed(0)} MiB/s | \`cat\` of the files to /dev/null ${catSec.toFixed(2)} s | |`,
        `| store RSS before → peak while streaming (VmHWM) | ${before.rss.toFixed(0)} → ${peak.toFixed(0)} MiB | | < 300 MiB |`,
      ].join('\n');
    });
  });
}

runIfMain(import.meta.url, run);
