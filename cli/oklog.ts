// `oklog <mode> [flags]`: the node modes and OK Log's client modes.
import { describeError } from '../shared/errors.ts';

const MODES: Record<string, string> = {
  forward: 'Forwarding agent: stdin to ingest nodes',
  ingest: 'Ingester node',
  store: 'Storage node',
  ingeststore: 'Combined ingest+store node, for small installations',
  query: 'Querying commandline tool',
  stream: 'Streaming commandline tool',
  testsvc: 'Test service, emits log lines at a fixed rate',
};

function banner(): string {
  const rows = Object.entries(MODES)
    .map(([m, d]) => `  ${m.padEnd(12)}${d}`)
    .join('\n');
  return `USAGE\n  oklog <mode> [flags]\n\nMODES\n${rows}\n\nVERSION\n  ${process.env.npm_package_version ?? 'dev'} (node ${process.version})\n`;
}

async function run(argv: string[]): Promise<number> {
  const mode = (argv[0] ?? '').toLowerCase();
  const rest = argv.slice(1);
  switch (mode) {
    case 'ingest':
    case 'store':
    case 'ingeststore': {
      const { runNode } = await import('../node/main.ts');
      return runNode(mode, rest);
    }
    case 'forward':
      return (await import('./forward.ts')).main(rest);
    case 'query':
      return (await import('./query.ts')).main(rest, 'oklog query');
    case 'stream':
      return (await import('./stream.ts')).main(rest, 'oklog stream');
    case 'testsvc':
      return (await import('./testsvc.ts')).main(rest);
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(banner());
      return 0;
    default:
      process.stderr.write(banner());
      if (mode) process.stderr.write(`\nunknown mode ${JSON.stringify(argv[0])}\n`);
      return 1;
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Long-running modes resolve only at shutdown: leave nothing (timers, sockets) keeping us alive.
    if (code !== undefined) setImmediate(() => process.exit(code)).unref();
  },
  (err) => {
    process.stderr.write(`oklog: ${describeError(err)}\n`);
    process.exit(1);
  },
);
