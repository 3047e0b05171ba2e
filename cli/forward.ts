// `oklog forward [flags] <ingester> [<ingester>...]`: stdin → ingest nodes (reference §7).
// Wiring only: stdin → LineSplitter → RecordBuffer → TcpSender (fast/durable TCP) or AckSender
// (`-ack`, acknowledged HTTP writes). See docs/CLI.md for what each mode guarantees.
import type { Server } from 'node:http';
import { describeError } from '../shared/errors.ts';
import type { FlagSpec } from '../shared/flags.ts';
import { isValidTopic } from '../shared/record.ts';
import { parseDuration } from '../shared/time.ts';
import {
  createLogger,
  EXIT_FAILURE,
  EXIT_OK,
  fail,
  hasByteUnit,
  type Logger,
  parseBytes,
  parseCommand,
  usageError,
} from './common.ts';
import { AckRejectedError, AckSender } from './forward/ack-sender.ts';
import { Backoff } from './forward/backoff.ts';
import { type OnFull, RecordBuffer } from './forward/buffer.ts';
import { LineSplitter } from './forward/line-splitter.ts';
import { ForwardMetrics, startApiServer } from './forward/metrics.ts';
import { autoWindowBytes, kernelBufferBytes } from './forward/resend-window.ts';
import { GaveUpError } from './forward/retrying.ts';
import { parseTarget, TargetRing } from './forward/targets.ts';
import { TcpSender } from './forward/tcp-sender.ts';

export const FAST_PORT = 7651;
export const API_PORT = 7650;
/** In records mode (`-buffer-size 10000`) memory is still capped at this many bytes. */
const RECORDS_MODE_BYTE_CAP = 256 * 1024 * 1024;
/** After SIGINT/SIGTERM, how long buffered records may take to get out before we give up. */
const SHUTDOWN_GRACE_MS = 5000;

export const forwardFlagSpecs: FlagSpec[] = [
  { name: 'debug', kind: 'bool', default: false, help: 'debug logging' },
  {
    name: 'api',
    kind: 'string',
    default: '',
    help: 'listen address for /metrics and /health (off if empty)',
  },
  { name: 'prefix', kind: 'strings', default: [], help: 'prefix annotated on each log record (repeatable)' },
  {
    name: 'topic',
    kind: 'string',
    default: '',
    help: 'topic: ?topic= with -ack, else the first prefix word (for -topic-mode dynamic ingesters)',
  },
  {
    name: 'ack',
    kind: 'bool',
    default: false,
    help: 'acknowledged writes: addresses are ingester APIs (default port 7650), POST /ingest/write',
  },
  {
    name: 'buffer-size',
    kind: 'string',
    default: '16MiB',
    help: 'buffer between stdin and network: bytes with a unit (64KiB, 16MiB) or a number of records',
  },
  {
    name: 'on-full',
    kind: 'string',
    default: 'block',
    help: 'when the buffer is full: block or drop-oldest',
  },
  {
    name: 'max-record-size',
    kind: 'string',
    default: '1MiB',
    help: 'longer records (prefix + line) are dropped and counted',
  },
  {
    name: 'resend-window',
    kind: 'string',
    default: 'auto',
    help: 'TCP mode: written bytes kept to re-send after a reconnect (auto: socket buffer sizes, >= 16MiB; 0: none)',
  },
  {
    name: 'resend-window-age',
    kind: 'string',
    default: '10s',
    help: 'TCP mode: older bytes count as read, unless the ingester was not keeping up (0: no age limit)',
  },
  {
    name: 'close-timeout',
    kind: 'string',
    default: '30s',
    help: 'TCP mode: at end of input, wait this long for the ingester to confirm it read everything',
  },
  {
    name: 'give-up',
    kind: 'string',
    default: '0',
    help: 'exit 1 once no ingester was reachable (-ack: no batch acknowledged) for this long (0: never)',
  },
  { name: 'ack-batch-size', kind: 'string', default: '1MiB', help: '-ack: maximum bytes per batch' },
  { name: 'ack-batch-records', kind: 'int', default: 10000, help: '-ack: maximum records per batch' },
  { name: 'ack-batch-wait', kind: 'string', default: '100ms', help: '-ack: how long a batch waits to fill' },
  {
    name: 'ack-timeout',
    kind: 'string',
    default: '30s',
    help: '-ack: wait this long for an answer, then send the batch again',
  },
  { name: 'connect-timeout', kind: 'string', default: '5s', help: 'TCP connect timeout' },
];

const EXTRA = '<ingester> [<ingester>...]';

interface Options {
  debug: boolean;
  api: string;
  prefix: Buffer;
  topic: string;
  ack: boolean;
  maxRecords: number;
  maxBytes: number;
  onFull: OnFull;
  maxRecordSize: number;
  resendWindow: number;
  resendWindowMs: number;
  closeTimeoutMs: number;
  giveUpMs: number;
  ackBatchBytes: number;
  ackBatchRecords: number;
  ackBatchWaitMs: number;
  ackTimeoutMs: number;
  connectTimeoutMs: number;
}

/** Flag values → options; throws with a one-line message on a bad value. */
function readOptions(v: Record<string, unknown>): Options {
  const onFull = String(v['on-full']);
  if (onFull !== 'block' && onFull !== 'drop-oldest')
    throw new Error(`-on-full must be block or drop-oldest, not ${JSON.stringify(onFull)}`);
  const topic = String(v.topic);
  if (topic !== '' && !isValidTopic(topic)) throw new Error(`invalid -topic ${JSON.stringify(topic)}`);
  const ack = v.ack as boolean;
  const sizeArg = String(v['buffer-size']);
  const size = parseBytes(sizeArg, '-buffer-size');
  if (size < 1) throw new Error('-buffer-size must be at least 1');
  const byBytes = hasByteUnit(sizeArg);
  const words = [...(!ack && topic ? [topic] : []), ...(v.prefix as string[])];
  // A newline would end every record early and make the rest of the line a record of its own.
  if (words.some((w) => w.includes('\n'))) throw new Error('-prefix must not contain a newline');
  const positive = (name: string, ms: number) => {
    if (!(ms > 0)) throw new Error(`-${name} must be positive`);
    return ms;
  };
  const maxRecordSize = parseBytes(String(v['max-record-size']), '-max-record-size');
  if (maxRecordSize < 1) throw new Error('-max-record-size must be at least 1');
  const prefix = Buffer.from(words.length > 0 ? `${words.join(' ')} ` : '');
  if (prefix.length >= maxRecordSize)
    throw new Error(`the prefix (${prefix.length} bytes) leaves no room under -max-record-size`);
  const windowArg = String(v['resend-window']).trim();
  const duration = (name: string) => Math.max(0, parseDuration(String(v[name])));
  const ackBatchRecords = v['ack-batch-records'] as number;
  if (ackBatchRecords < 1) throw new Error('-ack-batch-records must be at least 1');
  return {
    debug: v.debug as boolean,
    api: String(v.api),
    prefix,
    topic,
    ack,
    maxRecords: byBytes ? Number.POSITIVE_INFINITY : size,
    maxBytes: byBytes ? size : RECORDS_MODE_BYTE_CAP,
    onFull,
    maxRecordSize,
    resendWindow:
      windowArg.toLowerCase() === 'auto' ? autoWindowBytes() : parseBytes(windowArg, '-resend-window'),
    resendWindowMs: duration('resend-window-age'),
    closeTimeoutMs: positive('close-timeout', parseDuration(String(v['close-timeout']))),
    giveUpMs: duration('give-up'),
    ackBatchBytes: Math.max(1, parseBytes(String(v['ack-batch-size']), '-ack-batch-size')),
    ackBatchRecords,
    ackBatchWaitMs: Math.max(0, parseDuration(String(v['ack-batch-wait']))),
    ackTimeoutMs: positive('ack-timeout', parseDuration(String(v['ack-timeout']))),
    connectTimeoutMs: positive('connect-timeout', parseDuration(String(v['connect-timeout']))),
  };
}

/** Drops are a policy, not an error, but they must be visible: logged every 10 s and at exit. */
class DropReporter {
  private reported = { full: 0, long: 0 };
  private logged = { full: 0, long: 0 };

  constructor(
    private readonly log: Logger,
    private readonly metrics: ForwardMetrics,
    private readonly counts: () => { full: number; long: number },
  ) {}

  /** Moves new drops into the metric. Cheap; called after every stdin chunk. */
  update(): void {
    const c = this.counts();
    if (c.full > this.reported.full)
      this.metrics.dropped.inc({ reason: 'buffer_full' }, c.full - this.reported.full);
    if (c.long > this.reported.long)
      this.metrics.dropped.inc({ reason: 'too_long' }, c.long - this.reported.long);
    this.reported = c;
  }

  /** Logs drops since the last report (periodic), or the totals (final). */
  report(final = false): void {
    this.update();
    const c = this.counts();
    const fresh = c.full > this.logged.full || c.long > this.logged.long;
    if (fresh && !final)
      this.log.warn('dropped records', {
        buffer_full: c.full - this.logged.full,
        too_long: c.long - this.logged.long,
        buffer_full_total: c.full,
        too_long_total: c.long,
      });
    if (final && (c.full > 0 || c.long > 0))
      this.log.warn('dropped records in total', { buffer_full: c.full, too_long: c.long });
    this.logged = c;
  }
}

export async function main(argv: string[], name = 'oklog forward'): Promise<number> {
  const parsed = parseCommand(name, forwardFlagSpecs, argv, EXTRA);
  if (typeof parsed === 'number') return parsed;
  if (parsed.positional.length === 0)
    return usageError(name, forwardFlagSpecs, 'specify at least one ingest address as an argument', EXTRA);
  let o: Options;
  try {
    o = readOptions(parsed.values);
  } catch (err) {
    return usageError(name, forwardFlagSpecs, describeError(err), EXTRA);
  }
  let targets: TargetRing;
  try {
    const kind = o.ack ? 'http' : 'tcp';
    const port = o.ack ? API_PORT : FAST_PORT;
    targets = new TargetRing(parsed.positional.map((a) => parseTarget(a, port, kind)));
  } catch (err) {
    return fail(name, err);
  }

  const log = createLogger({ debug: o.debug });
  const buffer = new RecordBuffer({ maxRecords: o.maxRecords, maxBytes: o.maxBytes, onFull: o.onFull });
  const metrics = new ForwardMetrics(() => ({ records: buffer.records, bytes: buffer.bytes }));
  let api: Server | null = null;
  if (o.api) {
    try {
      api = await startApiServer(o.api, metrics);
    } catch (err) {
      return fail(name, new Error(`-api ${o.api}: ${describeError(err)}`));
    }
  }

  const splitter = new LineSplitter({ prefix: o.prefix, maxRecordSize: o.maxRecordSize });
  const backoff = new Backoff();
  const sender = o.ack
    ? new AckSender({
        targets,
        buffer,
        log,
        metrics,
        backoff,
        batchBytes: o.ackBatchBytes,
        batchRecords: o.ackBatchRecords,
        batchWaitMs: o.ackBatchWaitMs,
        timeoutMs: o.ackTimeoutMs,
        topic: o.topic,
        giveUpMs: o.giveUpMs,
      })
    : new TcpSender({
        targets,
        buffer,
        log,
        metrics,
        backoff,
        resendWindowBytes: o.resendWindow,
        resendWindowMs: o.resendWindowMs,
        connectTimeoutMs: o.connectTimeoutMs,
        closeTimeoutMs: o.closeTimeoutMs,
        giveUpMs: o.giveUpMs,
      });
  if (!o.ack && o.resendWindow > 0 && o.resendWindow < kernelBufferBytes())
    log.info('-resend-window is smaller than what socket buffers can hold; records may be lost', {
      resend_window: o.resendWindow,
      socket_buffers: kernelBufferBytes(),
    });
  const drops = new DropReporter(log, metrics, () => ({
    full: buffer.dropped,
    long: splitter.droppedTooLong + (sender instanceof AckSender ? sender.droppedTooLarge : 0),
  }));
  const dropTimer = setInterval(() => drops.report(), 10_000);
  dropTimer.unref();

  // stdin → splitter → buffer. In block mode a full buffer pauses stdin: the pipe fills and the
  // producer blocks, which is the backpressure OK Log always applied.
  const stdin = process.stdin;
  let inputDone = false;
  /** `bySignal`: input was cut off, not ended (see LineSplitter.abandon). */
  const finishInput = (bySignal = false) => {
    if (inputDone) return;
    inputDone = true;
    stdin.pause();
    if (bySignal) {
      const torn = splitter.abandon();
      if (torn > 0)
        log.warn('input stopped by a signal mid-line; that partial line is not sent', { bytes: torn });
    } else {
      const tail = splitter.end();
      if (tail) buffer.push(tail);
    }
    drops.update();
    buffer.end();
  };
  stdin.on('data', (chunk: Buffer) => {
    if (inputDone) return;
    let room = true;
    for (const block of splitter.split(chunk)) room = buffer.push(block);
    if (!room) {
      stdin.pause();
      buffer.waitForRoom().then(() => {
        if (!inputDone) stdin.resume();
      });
    }
    drops.update();
  });
  stdin.on('end', () => {
    log.debug('stdin exhausted');
    finishInput();
  });
  stdin.on('error', (err) => {
    log.warn('stdin exhausted', { due_to: describeError(err) });
    finishInput();
  });

  // First signal: stop reading, send what is buffered (bounded by a grace period). Second: quit.
  let signalled = false;
  let grace: NodeJS.Timeout | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      sender.stop();
      return;
    }
    signalled = true;
    log.info('received signal; flushing', { signal: sig, pending_records: sender.pendingRecords });
    finishInput(true);
    grace = setTimeout(() => sender.stop(), SHUTDOWN_GRACE_MS);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let code = EXIT_OK;
  try {
    const outcome = await sender.run();
    const pending = sender.pendingRecords;
    const unconfirmed = sender.unconfirmedRecords;
    if (outcome !== 'done' && pending > 0) {
      log.error('records not forwarded', { records: pending });
      code = EXIT_FAILURE;
    }
    if (outcome !== 'done' && (unconfirmed > 0 || outcome === 'unconfirmed')) {
      log.error('records written but not confirmed by the ingester', { records: unconfirmed });
      code = EXIT_FAILURE;
    }
  } catch (err) {
    if (err instanceof GaveUpError) {
      log.error('gave up', { undelivered: err.undelivered });
      process.stderr.write(`${name}: ${err.message}\n`);
    } else if (err instanceof AckRejectedError) {
      log.error('ingester rejected a batch', { err: err.message, unacknowledged: sender.pendingRecords });
      process.stderr.write(`${name}: ${err.message}\n`);
    } else {
      process.stderr.write(`${name}: ${describeError(err)}\n`);
    }
    code = EXIT_FAILURE;
  } finally {
    clearTimeout(grace);
    clearInterval(dropTimer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    stdin.pause();
    drops.report(true);
    api?.close();
  }
  log.debug('forwarder exiting', { code });
  return code;
}
