// Starts a TypeScript entry point of this package without a build step and without tsx's
// per-module cost at run time: the entry and every module it imports from this repository are
// bundled once with esbuild (the compiler tsx itself uses) into node_modules/.cache/oklog/, and
// rebuilt only when one of those source files changes (checked by size and mtime, a few
// milliseconds per start). A command then starts in about a tenth of a second instead of half a
// second, and a node carries no module-loader thread (~37 MiB). Packages stay external and load
// from node_modules as usual. If the cache cannot be written (a read-only install) or esbuild
// fails, the entry runs through tsx as before.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
// Must lie inside the package, so that the bundles' package imports resolve to its node_modules.
const CACHE = process.env.OKLOG_BUNDLE_DIR
  ? resolve(process.env.OKLOG_BUNDLE_DIR)
  : join(ROOT, 'node_modules', '.cache', 'oklog');
/** Bundled beside every entry: the query scan worker, started by path (node/store/scan-pool.ts). */
const WORKER = join(ROOT, 'node', 'store', 'scan-worker.ts');

function fresh(manifestPath) {
  try {
    const m = JSON.parse(readFileSync(manifestPath, 'utf8'));
    if (m.node !== process.version) return false;
    for (const [rel, size, mtimeMs] of m.inputs) {
      const s = statSync(join(ROOT, rel));
      if (s.size !== size || s.mtimeMs !== mtimeMs) return false;
    }
    for (const out of m.outputs) statSync(join(CACHE, out));
    return true;
  } catch {
    return false;
  }
}

const COMMON = {
  absWorkingDir: ROOT,
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  keepNames: true,
  metafile: true,
  logLevel: 'silent',
};

async function build(entry, name, manifestPath) {
  const esbuild = await import('esbuild');
  const tmp = join(CACHE, `.${name}-${process.pid}`);
  try {
    const main = await esbuild.build({
      ...COMMON,
      entryPoints: { [name]: entry },
      outdir: tmp,
      outExtension: { '.js': '.mjs' },
      // Modules imported dynamically (a node's ingest and store parts) become chunks loaded on
      // demand, so `oklog forward` does not load fastify and the store.
      splitting: true,
      chunkNames: `${name}-[hash]`,
    });
    // The worker is one self-contained file: every entry's build writes the same one.
    const worker = await esbuild.build({
      ...COMMON,
      entryPoints: [WORKER],
      outfile: join(tmp, 'scan-worker.mjs'),
    });
    const inputs = [main, worker].flatMap((r) =>
      Object.keys(r.metafile.inputs).map((p) => {
        const s = statSync(join(ROOT, p));
        return [p, s.size, s.mtimeMs];
      }),
    );
    const outputs = Object.keys(main.metafile.outputs).map((p) => relative(tmp, join(ROOT, p)));
    // Chunks first, entries last, each renamed into place (atomic): a concurrent start reads
    // whole files, and an entry only once the chunks it names are there.
    for (const out of [...outputs.filter((o) => o !== `${name}.mjs`), 'scan-worker.mjs', `${name}.mjs`])
      renameSync(join(tmp, out), join(CACHE, out));
    const manifest = `${manifestPath}.${process.pid}`;
    writeFileSync(
      manifest,
      JSON.stringify({ node: process.version, inputs, outputs: [...outputs, 'scan-worker.mjs'] }),
    );
    renameSync(manifest, manifestPath);
    // Chunks of earlier builds of this entry are no longer named by it.
    for (const f of readdirSync(CACHE))
      if (f.startsWith(`${name}-`) && f.endsWith('.mjs') && !outputs.includes(f))
        rmSync(join(CACHE, f), { force: true });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** Runs `entry` (an absolute path to a .ts file of this repository). */
export async function launch(entry) {
  const name = basename(entry, '.ts');
  const manifestPath = join(CACHE, `${name}.json`);
  try {
    if (!fresh(manifestPath)) {
      mkdirSync(CACHE, { recursive: true });
      await build(entry, name, manifestPath);
    }
  } catch {
    const { register } = await import('tsx/esm/api');
    register();
    await import(pathToFileURL(entry).href);
    return;
  }
  await import(pathToFileURL(join(CACHE, `${name}.mjs`)).href);
}
