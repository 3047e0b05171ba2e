// `oklogctl query` / `oklog query`: a time-bounded query against any store node (reference §8.1),
// with OK Log's flags plus -topic, -limit and -o json. A 206 (some store nodes failed) prints the
// results, warns naming the failed nodes and exits 3, where OK Log failed outright (§11.2 item 6).
import { applyTrailers, OklogClient, type QueryResult, type QueryStats } from '../shared/client.ts';
import type { FlagSpec } from '../shared/flags.ts';
import { isValidTopic } from '../shared/record.ts';
import { formatDuration, parseTimeArg } from '../shared/time.ts';
import {
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_PARTIAL,
  fail,
  isCutOff,
  Output,
  parseCommand,
  usageError,
} from './common.ts';
import { type OutputFormat, RecordPrinter } from './output.ts';

export const queryFlagSpecs: FlagSpec[] = [
  { name: 'store', kind: 'string', default: 'localhost:7650', help: 'address of store instance to query' },
  { name: 'from', kind: 'string', default: '1h', help: 'from, as RFC3339 timestamp or duration ago' },
  { name: 'to', kind: 'string', default: 'now', help: 'to, as RFC3339 timestamp or duration ago' },
  { name: 'q', kind: 'string', default: '', help: 'query expression' },
  { name: 'regex', kind: 'bool', default: false, help: 'parse -q as regular expression' },
  { name: 'topic', kind: 'string', default: '', help: 'only records of this topic' },
  { name: 'limit', kind: 'int', default: 0, help: 'at most this many records (0: no limit)' },
  { name: 'stats', kind: 'bool', default: false, help: 'statistics only, no records (implies -v)' },
  { name: 'nocopy', kind: 'bool', default: false, help: "don't read the response body" },
  { name: 'ulid', kind: 'bool', default: false, help: 'include ULID prefix with each record' },
  { name: 'time', kind: 'bool', default: false, help: 'include time prefix with each record' },
  { name: 'v', kind: 'bool', default: false, help: 'verbose output to stderr' },
  { name: 'o', kind: 'string', default: 'text', help: 'output format: text or json' },
];

function verboseLines(method: string, r: QueryResult, elapsedMs: number): string {
  const s = r.stats;
  const lines = [
    `${method} ${r.url}`,
    `Response in ${formatDuration(elapsedMs)}`,
    `Queried from ${s.from}`,
    `Queried to ${s.to}`,
    `Queried ${s.regex ? 'regular expression' : 'normal string'} ${JSON.stringify(s.q)}`,
    `${s.nodesQueried} node(s) queried`,
    `${s.segmentsQueried} segment(s) queried`,
    `${s.maxDataSetSize}B (${Math.floor(s.maxDataSetSize / (1024 * 1024))}MiB) maximum data set size`,
    `${s.errorCount} error(s)`,
    `${s.duration} server-reported duration`,
  ];
  // For GET the count usually comes as a trailer, after the records; it is printed then.
  if (s.recordsMatched !== null) lines.push(`${s.recordsMatched} record(s) matched`);
  return `${lines.join('\n')}\n`;
}

/** Stats as JSON, with the field names of OK Log's Go struct tags. */
function statsJson(r: QueryResult): Record<string, unknown> {
  const s: QueryStats = r.stats;
  return {
    status: r.status,
    partial: r.partial,
    from: s.from,
    to: s.to,
    q: s.q,
    regex: s.regex,
    nodes_queried: s.nodesQueried,
    segments_queried: s.segmentsQueried,
    max_data_set_size: s.maxDataSetSize,
    error_count: s.errorCount,
    duration: s.duration,
    records_matched: s.recordsMatched,
    failed_nodes: s.failedNodes,
  };
}

/** `-store ''` would otherwise fail as `: empty address`. */
export function storeClient(store: string): OklogClient {
  if (store.trim() === '') throw new Error('-store: empty address');
  return new OklogClient(store);
}

function partialWarning(command: string, s: QueryStats): string {
  const who = s.failedNodes.length > 0 ? s.failedNodes.join(', ') : 'unknown nodes';
  const n = s.failedNodes.length > 0 ? s.failedNodes.length : s.errorCount;
  return `${command}: warning: partial results: ${n} store node(s) did not answer: ${who}\n`;
}

export async function main(argv: string[], name = 'oklogctl query'): Promise<number> {
  const parsed = parseCommand(name, queryFlagSpecs, argv);
  if (typeof parsed === 'number') return parsed;
  const f = parsed.values;
  if (parsed.positional.length > 0)
    return usageError(name, queryFlagSpecs, `unexpected argument ${JSON.stringify(parsed.positional[0])}`);
  const o = String(f.o);
  if (o !== 'text' && o !== 'json')
    return usageError(name, queryFlagSpecs, `-o must be text or json, not ${JSON.stringify(o)}`);
  if ((f.limit as number) < 0) return usageError(name, queryFlagSpecs, '-limit must not be negative');
  const topic = String(f.topic);
  if (topic !== '' && !isValidTopic(topic))
    return usageError(name, queryFlagSpecs, `invalid -topic ${JSON.stringify(topic)}`);

  const statsOnly = f.stats as boolean;
  const verbose = (f.v as boolean) || statsOnly;
  const json = o === 'json';
  const format: OutputFormat = json ? 'json' : f.ulid ? 'ulid' : f.time ? 'time' : 'plain';

  let client: OklogClient;
  let from: number;
  let to: number;
  try {
    client = storeClient(String(f.store));
    const now = Date.now();
    from = parseTimeArg(String(f.from), now, '-from');
    to = parseTimeArg(String(f.to), now, '-to');
  } catch (err) {
    return fail(name, err);
  }
  // The store would answer an empty result: say why instead.
  if (from > to)
    return fail(
      name,
      new Error(
        `-from (${new Date(from).toISOString()}) is after -to (${new Date(to).toISOString()}): nothing can match`,
      ),
    );

  const began = performance.now();
  let result: QueryResult;
  try {
    result = await client.query(
      { from, to, q: String(f.q), regex: f.regex as boolean, topic, limit: f.limit as number },
      { statsOnly },
    );
  } catch (err) {
    return fail(name, err);
  }
  const method = statsOnly ? 'HEAD' : 'GET';
  const elapsed = performance.now() - began;
  // Verbose lines go to stderr before the records, as OK Log prints them; with -o json the stats
  // object goes to stdout instead (only with -stats, so stdout stays one record per line).
  if (verbose && !(json && statsOnly)) process.stderr.write(verboseLines(method, result, elapsed));
  const matchedShown = result.stats.recordsMatched !== null;

  const body = result.body;
  const out = new Output(process.stdout, () => body.destroy());
  let code = EXIT_OK;
  let printer: RecordPrinter | null = null;
  try {
    if (statsOnly) {
      body.resume();
      if (json) await out.write(`${JSON.stringify(statsJson(result))}\n`);
    } else if (f.nocopy) {
      body.resume();
      await new Promise<void>((res, rej) => body.on('end', res).on('error', rej));
      if (applyTrailers(result.stats, body.trailers)) result.partial = true;
    } else {
      printer = new RecordPrinter({ format, limit: f.limit as number, topic });
      for await (const chunk of body) {
        // Past -limit the rest is read and discarded, not cut off: the trailers after the body
        // may name a node that failed, and the server stops at the limit anyway.
        if (printer.done) continue;
        const data = printer.push(chunk as Buffer);
        if (data && !(await out.write(data))) break;
      }
      if (!out.broken) {
        const tail = printer.end();
        if (tail) await out.write(tail);
        // The whole body was read: trailers may report a node that failed mid-body.
        if (body.complete && applyTrailers(result.stats, body.trailers)) result.partial = true;
        if (verbose && result.stats.recordsMatched !== null && !matchedShown)
          process.stderr.write(`${result.stats.recordsMatched} record(s) matched\n`);
      }
      // Stdout closed: nothing more is needed.
      body.destroy();
    }
  } catch (err) {
    if (out.broken) {
      // `| head`: quiet.
    } else if (isCutOff(err)) {
      const n = printer ? ` after ${printer.count} record(s)` : '';
      code = fail(
        name,
        new Error(
          `${method} ${client.base}/store/query: the node closed the connection mid-response${n}; the results are incomplete`,
        ),
      );
    } else code = fail(name, err);
  }
  if (out.error) code = fail(name, out.error);
  if (result.partial) {
    process.stderr.write(partialWarning(name, result.stats));
    if (code === EXIT_OK) code = EXIT_PARTIAL;
  }
  return code === EXIT_OK || code === EXIT_PARTIAL ? code : EXIT_FAILURE;
}
