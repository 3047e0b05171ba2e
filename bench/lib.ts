// Plumbing shared by the benchmarks: memory readings of a process, and running one benchmark file
// on its own (`node --import tsx bench/e2e.ts`) as well as from `npm run bench`.
import { readFile } from 'node:fs/promises';

/** Current and peak resident memory of `pid`, in MiB (VmRSS, VmHWM). */
export async function memoryMiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  const mib = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? Number.NaN) / 1024;
  return { rss: mib('VmRSS'), hwm: mib('VmHWM') };
}

/** Runs the benchmark and prints its Markdown when `moduleUrl` is the script node was started with. */
export function runIfMain(moduleUrl: string, run: () => Promise<string>): void {
  if (moduleUrl !== `file://${process.argv[1]}`) return;
  run().then(
    (md) => process.stdout.write(`${md}\n`),
    (err) => {
      process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
      process.exit(1);
    },
  );
}
