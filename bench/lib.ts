// Plumbing shared by the benchmarks: memory readings of a process, the temporary directory and the
// node of a run, and running one benchmark file on its own (`node --import tsx bench/e2e.ts`) as
// well as from `npm run bench`.
import { memoryOf, type Proc, tempDir } from '../test/helpers/index.ts';

/** Current and peak resident memory of `pid`, in MiB (VmRSS, VmHWM). */
export async function memoryMiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const m = await memoryOf(pid);
  return { rss: m.rss / 2 ** 20, hwm: m.hwm / 2 ** 20 };
}

/** Runs `fn` in a new temporary directory, removed afterwards whatever happens. */
export async function withTempDir<T>(prefix: string, fn: (tmp: { path: string }) => Promise<T>): Promise<T> {
  const tmp = await tempDir(prefix);
  try {
    return await fn(tmp);
  } finally {
    await tmp.cleanup();
  }
}

/** Runs `fn` with a started node, then stops the node (SIGTERM) whatever happens. */
export async function withNode<T>(node: { proc: Proc }, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } finally {
    await node.proc.kill('SIGTERM');
  }
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
