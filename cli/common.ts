// What every command does the same way: flag parsing with `-h`, usage errors (exit 2), one-line
// failures (exit 1, never a stack trace), byte sizes and logfmt logging on stderr.
import { describeError, InvalidArgumentError } from '../shared/errors.ts';
import { type FlagSpec, type ParsedFlags, parseFlags, usage } from '../shared/flags.ts';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
/** The query succeeded only partly (206): some store nodes did not answer. */
export const EXIT_PARTIAL = 3;

/**
 * Parses flags; on `-h` prints usage to stdout and returns 0, on a bad flag prints one line plus
 * usage to stderr and returns 2. Otherwise returns the parsed flags.
 */
export function parseCommand(
  command: string,
  specs: FlagSpec[],
  argv: string[],
  extra = '',
): ParsedFlags | number {
  let parsed: ParsedFlags;
  try {
    parsed = parseFlags(specs, argv);
  } catch (err) {
    process.stderr.write(`${command}: ${describeError(err)}\n${usage(command, specs, extra)}`);
    return EXIT_USAGE;
  }
  if (parsed.help) {
    process.stdout.write(usage(command, specs, extra));
    return EXIT_OK;
  }
  return parsed;
}

/** A usage problem found after parsing (bad value, missing argument): one line + usage, exit 2. */
export function usageError(command: string, specs: FlagSpec[], message: string, extra = ''): number {
  process.stderr.write(`${command}: ${message}\n${usage(command, specs, extra)}`);
  return EXIT_USAGE;
}

/** A runtime failure: one line on stderr, exit 1. */
export function fail(command: string, err: unknown): number {
  process.stderr.write(`${command}: ${describeError(err)}\n`);
  return EXIT_FAILURE;
}

const SIZE = /^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$/i;
const UNIT: Record<string, number> = {
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
};

/** `512`, `64KiB`, `1MiB`, `10MB`, `2g` → bytes (`K`/`M`/`G` alone are binary). */
export function parseBytes(value: string, what = 'size'): number {
  const m = SIZE.exec(value.trim());
  if (!m) throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(value)}`, { value });
  return Math.floor(Number(m[1]) * UNIT[(m[2] ?? 'b').toLowerCase()]);
}

/** True if the size string has a unit (bytes), false for a plain count. */
export function hasByteUnit(value: string): boolean {
  return /[a-z]\s*$/i.test(value.trim());
}

export type Level = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

function logfmtValue(v: unknown): string {
  const s = v instanceof Error ? describeError(v) : typeof v === 'string' ? v : JSON.stringify(v);
  return /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s);
}

/** logfmt lines on stderr, as OK Log's tools print them: `ts=… level=… msg=… key=value`. */
export function createLogger(options: { debug?: boolean; write?: (line: string) => void } = {}): Logger {
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  const log = (level: Level, msg: string, fields: Record<string, unknown> = {}) => {
    if (level === 'debug' && !options.debug) return;
    let line = `ts=${new Date().toISOString()} level=${level} msg=${logfmtValue(msg)}`;
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${logfmtValue(v)}`;
    write(`${line}\n`);
  };
  return {
    debug: (m, f) => log('debug', m, f),
    info: (m, f) => log('info', m, f),
    warn: (m, f) => log('warn', m, f),
    error: (m, f) => log('error', m, f),
  };
}

/** True for the errors a closed stdout pipe produces (`oklogctl query | head`). */
export function isBrokenPipe(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED';
}

/**
 * True for a response body that ended before the server finished it: the connection closed (or
 * was reset) mid-body, e.g. the node stopped or died. Node reports it as `aborted` / ECONNRESET.
 */
export function isCutOff(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null;
  return e?.code === 'ECONNRESET' || e?.code === 'ERR_STREAM_PREMATURE_CLOSE' || e?.message === 'aborted';
}

/**
 * Writes to stdout with backpressure; a closed pipe (`| head`) is noted, not thrown, so commands
 * can stop quietly. `onBroken` lets the caller abort its source at once.
 */
export class Output {
  broken = false;
  private aborted = false;
  private failure: Error | null = null;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly stream: NodeJS.WritableStream = process.stdout,
    private readonly onBroken: () => void = () => {},
  ) {
    stream.on('error', (err: Error) => {
      if (!this.broken) {
        this.broken = true;
        if (!isBrokenPipe(err)) this.failure = err;
        this.onBroken();
      }
      this.wake();
    });
    stream.on('drain', () => this.wake());
  }

  /** A write error other than a closed pipe, if one happened. */
  get error(): Error | null {
    return this.failure;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves when the data is accepted (or the pipe is broken). Returns false if broken. */
  async write(data: Buffer | string): Promise<boolean> {
    if (this.broken || this.aborted) return false;
    if (!this.stream.write(data)) await new Promise<void>((r) => this.waiters.push(r));
    return !this.broken && !this.aborted;
  }

  /**
   * Stops writing: a write waiting for a blocked stdout (`| sleep 30`) returns false at once, and
   * later ones too. Signal handlers call it, since a full pipe never drains by itself.
   */
  abort(): void {
    this.aborted = true;
    this.wake();
  }
}
