// `oklogctl peers`: given any one node's API address, list every live cluster member (name, type,
// API address, gossip address, state) from its `GET /cluster/peers`. Also the discovery helpers
// `oklogctl stats` uses.
import { dialHost, joinHostPort, parseAddr } from '../../shared/addr.ts';
import { describeError, InvalidArgumentError, RemoteError } from '../../shared/errors.ts';
import { type FlagSpec, type ParsedFlags, parseFlags, usage } from '../../shared/flags.ts';
import { parseDuration } from '../../shared/time.ts';

export const DEFAULT_API_PORT = 7650;

/** Where a command writes; tests pass their own sinks. */
export interface Io {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

export const processIo: Io = { stdout: process.stdout, stderr: process.stderr };

/** A member as `GET /cluster/peers` returns it. */
export interface Peer {
  name: string;
  type: 'ingest' | 'store' | 'ingeststore';
  apiAddr: string;
  gossipAddr: string;
  state: string;
}

export function commonFlags(): FlagSpec[] {
  return [
    {
      name: 'store',
      kind: 'string',
      default: `localhost:${DEFAULT_API_PORT}`,
      help: 'API address of any node of the cluster',
    },
    { name: 'o', kind: 'string', default: 'table', help: 'output format: table or json' },
    { name: 'timeout', kind: 'duration', default: '5s', help: 'timeout of each HTTP request' },
  ];
}

export interface Common {
  base: string;
  json: boolean;
  timeoutMs: number;
}

/** Parses flags; returns the parsed values or an exit code (0 for -h, 2 for a usage error). */
export function parseCommon(command: string, specs: FlagSpec[], argv: string[], io: Io): Common | number {
  let parsed: ParsedFlags;
  try {
    parsed = parseFlags(specs, argv);
  } catch (err) {
    io.stderr.write(`${command}: ${describeError(err)}\n${usage(command, specs)}`);
    return 2;
  }
  if (parsed.help) {
    io.stdout.write(usage(command, specs));
    return 0;
  }
  try {
    if (parsed.positional.length > 0)
      throw new InvalidArgumentError(`unexpected argument ${JSON.stringify(parsed.positional[0])}`);
    const o = String(parsed.values.o);
    if (o !== 'table' && o !== 'json')
      throw new InvalidArgumentError(`-o must be table or json, not ${JSON.stringify(o)}`);
    const timeoutMs = parseDuration(String(parsed.values.timeout));
    if (!(timeoutMs > 0)) throw new InvalidArgumentError('-timeout must be positive');
    const a = parseAddr(String(parsed.values.store), DEFAULT_API_PORT);
    return { base: `http://${joinHostPort(dialHost(a.host), a.port)}`, json: o === 'json', timeoutMs };
  } catch (err) {
    io.stderr.write(`${command}: ${describeError(err)}\n${usage(command, specs)}`);
    return 2;
  }
}

/** GET a JSON document; failures become one-line RemoteErrors. */
export async function getJson(url: string, timeoutMs: number): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why =
      (err as Error).name === 'TimeoutError'
        ? `no answer within ${timeoutMs} ms`
        : (cause?.code ?? cause?.message ?? (err as Error).message);
    throw new RemoteError(`GET ${url}: ${why}`);
  }
  const body = await res.text().catch(() => '');
  if (!res.ok)
    throw new RemoteError(`GET ${url}: ${res.status} ${body.trim().slice(0, 200)}`, { status: res.status });
  try {
    return JSON.parse(body);
  } catch {
    throw new RemoteError(`GET ${url}: not JSON`);
  }
}

function isPeer(v: unknown): v is Peer {
  const p = v as Record<string, unknown>;
  return (
    typeof p === 'object' &&
    p !== null &&
    typeof p.name === 'string' &&
    typeof p.type === 'string' &&
    typeof p.apiAddr === 'string' &&
    typeof p.gossipAddr === 'string' &&
    typeof p.state === 'string'
  );
}

/** The live members, as one node sees them. */
export async function discoverPeers(base: string, timeoutMs: number): Promise<Peer[]> {
  const body = await getJson(`${base}/cluster/peers`, timeoutMs);
  if (!Array.isArray(body) || !body.every(isPeer))
    throw new RemoteError(`${base}/cluster/peers: unexpected response`);
  return body.sort((a, b) => a.type.localeCompare(b.type) || a.apiAddr.localeCompare(b.apiAddr));
}

/** Left-aligned columns separated by two spaces. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join('\n')}\n`;
}

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const command = 'oklogctl peers';
  const c = parseCommon(command, commonFlags(), argv, io);
  if (typeof c === 'number') return c;
  let peers: Peer[];
  try {
    peers = await discoverPeers(c.base, c.timeoutMs);
  } catch (err) {
    io.stderr.write(`${command}: ${describeError(err)}\n`);
    return 1;
  }
  if (c.json) io.stdout.write(`${JSON.stringify(peers, null, 2)}\n`);
  else
    io.stdout.write(
      table(
        ['NAME', 'TYPE', 'API', 'GOSSIP', 'STATE'],
        peers.map((p) => [p.name, p.type, p.apiAddr, p.gossipAddr, p.state]),
      ),
    );
  return 0;
}
