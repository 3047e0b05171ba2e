// `npm run bench`: runs every benchmark in one go and writes bench/RESULTS.md with the machine
// and date. Each benchmark compares against a reference measured in the same run, because
// absolute numbers drift from run to run. Pass names to run a subset: `npm run bench -- ingest`.
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';

const BENCHES: Record<string, () => Promise<{ run: () => Promise<string> }>> = {
  ingest: () => import('./ingest.ts'),
  e2e: () => import('./e2e.ts'),
  stream: () => import('./stream.ts'),
  cluster: () => import('./cluster.ts'),
};

function machine(): string {
  const cpu = cpus();
  let kernel = '';
  try {
    kernel = execFileSync('uname', ['-srm'], { encoding: 'utf8' }).trim();
  } catch {}
  return `${cpu.length} × ${cpu[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${kernel}, Node.js ${process.version}`;
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  const names = wanted.length ? wanted : Object.keys(BENCHES);
  const sections: string[] = [];
  for (const name of names) {
    const load = BENCHES[name];
    if (!load) throw new Error(`unknown benchmark ${name}; have ${Object.keys(BENCHES).join(', ')}`);
    process.stderr.write(`== ${name}\n`);
    const started = Date.now();
    const section = await (await load()).run();
    process.stderr.write(`== ${name} done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    sections.push(section.trim());
  }
  const header = `# Benchmark results\n\nRun with \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}.\n\nMachine: ${machine()}.\n\nTargets are from DESIGN.md §8; every figure is a ratio against a reference measured in the same run.\n`;
  const out = `${header}\n${sections.join('\n\n')}\n`;
  const path = join(import.meta.dirname, 'RESULTS.md');
  await writeFile(path, out);
  // Aligned tables, as the formatter `npm test` checks wants them.
  try {
    execFileSync(join(import.meta.dirname, '../node_modules/.bin/biome'), ['format', '--write', path], {
      stdio: 'ignore',
    });
  } catch {}
  process.stdout.write(out);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
