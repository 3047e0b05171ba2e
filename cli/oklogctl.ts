// `oklogctl <command> [flags]`: query, stream, peers, stats against any node of a cluster.
import { describeError } from '../shared/errors.ts';

const COMMANDS: Record<string, string> = {
  query: 'Query the store tier (-from, -to, -q, -regex, -topic, -limit, -stats, -o json)',
  stream: 'Stream matching records live',
  peers: 'List cluster members, their types and API addresses',
  stats: 'Cluster-wide ingest and store statistics',
};

function banner(): string {
  const rows = Object.entries(COMMANDS)
    .map(([m, d]) => `  ${m.padEnd(10)}${d}`)
    .join('\n');
  return `USAGE\n  oklogctl <command> [flags]\n\nCOMMANDS\n${rows}\n\nRun 'oklogctl <command> -h' for a command's flags.\n`;
}

async function run(argv: string[]): Promise<number> {
  const cmd = (argv[0] ?? '').toLowerCase();
  const rest = argv.slice(1);
  switch (cmd) {
    case 'query':
      return (await import('./query.ts')).main(rest, 'oklogctl query');
    case 'stream':
      return (await import('./stream.ts')).main(rest, 'oklogctl stream');
    case 'peers':
      return (await import('./ctl/peers.ts')).main(rest);
    case 'stats':
      return (await import('./ctl/stats.ts')).main(rest);
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(banner());
      return 0;
    default:
      process.stderr.write(banner());
      if (cmd) process.stderr.write(`\nunknown command ${JSON.stringify(argv[0])}\n`);
      return 1;
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    setImmediate(() => process.exit(code)).unref();
  },
  (err) => {
    process.stderr.write(`oklogctl: ${describeError(err)}\n`);
    process.exit(1);
  },
);
