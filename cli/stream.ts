// `oklogctl stream` / `oklog stream`: follow matching records live (reference §8.2). Prints until
// the server closes the stream (exit 0) or SIGINT/SIGTERM arrives (exit 0, quietly: stopping a
// tail is the normal way to end it, unlike OK Log's exit 1). A stream the node cuts off mid-body
// (a node stopping ends its streams that way) is the server closing it too: exit 0, with one line
// on stderr saying which node did it, so a tail that ended unexpectedly is not a mystery.
import type { IncomingMessage } from 'node:http';
import type { OklogClient } from '../shared/client.ts';
import type { FlagSpec } from '../shared/flags.ts';
import { isValidTopic } from '../shared/record.ts';
import { formatDuration, parseDuration } from '../shared/time.ts';
import { EXIT_OK, fail, isCutOff, Output, parseCommand, usageError } from './common.ts';
import { type OutputFormat, RecordPrinter } from './output.ts';
import { storeClient } from './query.ts';

export const streamFlagSpecs: FlagSpec[] = [
  { name: 'store', kind: 'string', default: 'localhost:7650', help: 'address of store instance to query' },
  { name: 'q', kind: 'string', default: '', help: 'query expression' },
  { name: 'regex', kind: 'bool', default: false, help: 'parse -q as regular expression' },
  { name: 'window', kind: 'string', default: '3s', help: 'deduplication window' },
  { name: 'topic', kind: 'string', default: '', help: 'only records of this topic' },
  { name: 'ulid', kind: 'bool', default: false, help: 'include ULID prefix with each record' },
  { name: 'time', kind: 'bool', default: false, help: 'include time prefix with each record' },
  { name: 'o', kind: 'string', default: 'text', help: 'output format: text or json' },
];

export async function main(argv: string[], name = 'oklogctl stream'): Promise<number> {
  const parsed = parseCommand(name, streamFlagSpecs, argv);
  if (typeof parsed === 'number') return parsed;
  const f = parsed.values;
  if (parsed.positional.length > 0)
    return usageError(name, streamFlagSpecs, `unexpected argument ${JSON.stringify(parsed.positional[0])}`);
  const o = String(f.o);
  if (o !== 'text' && o !== 'json')
    return usageError(name, streamFlagSpecs, `-o must be text or json, not ${JSON.stringify(o)}`);
  const topic = String(f.topic);
  if (topic !== '' && !isValidTopic(topic))
    return usageError(name, streamFlagSpecs, `invalid -topic ${JSON.stringify(topic)}`);
  let window: string;
  try {
    const ms = parseDuration(String(f.window));
    if (ms <= 0) throw new Error(`-window must be positive, not ${JSON.stringify(f.window)}`);
    window = formatDuration(ms);
  } catch (err) {
    return usageError(name, streamFlagSpecs, (err as Error).message);
  }
  const format: OutputFormat = o === 'json' ? 'json' : f.ulid ? 'ulid' : f.time ? 'time' : 'plain';

  let client: OklogClient;
  try {
    client = storeClient(String(f.store));
  } catch (err) {
    return fail(name, err);
  }

  const abort = new AbortController();
  let stopped = false;
  let body: IncomingMessage | null = null;
  const out = new Output(process.stdout, () => body?.destroy());
  const onSignal = () => {
    stopped = true;
    abort.abort();
    // A blocked stdout never drains by itself: release a write waiting for it as well.
    out.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    ({ body } = await client.stream(
      { q: String(f.q), regex: f.regex as boolean, topic, window },
      { signal: abort.signal },
    ));
    const printer = new RecordPrinter({ format, topic });
    try {
      for await (const chunk of body) {
        const data = printer.push(chunk as Buffer);
        if (data && !(await out.write(data))) break;
      }
      const tail = printer.end();
      if (tail && !out.broken && !stopped) await out.write(tail);
    } catch (err) {
      if (!stopped && !out.broken) {
        if (!isCutOff(err)) throw err;
        process.stderr.write(
          `${name}: the stream ended: ${client.base} closed the connection mid-response (node stopped or failed)\n`,
        );
      }
    }
    if (out.error) return fail(name, out.error);
    return EXIT_OK;
  } catch (err) {
    if (stopped) return EXIT_OK;
    return fail(name, err);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
