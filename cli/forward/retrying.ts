// What both senders do while ingesters fail: one clear warning line that names every failing
// ingester and says the forwarder keeps retrying, repeated at most every 10 s (a down ingester
// fails every second), and the optional `-give-up` deadline after which the forwarder stops and
// reports what it could not deliver. By default it never gives up: records are kept, not lost.
import { describeError, OklogError } from '../../shared/errors.ts';
import { formatDuration } from '../../shared/time.ts';
import type { Logger } from '../common.ts';

/** `-give-up` expired: no ingester could be reached (or acknowledged) for that long. */
export class GaveUpError extends OklogError {
  readonly undelivered: number;
  constructor(message: string, undelivered: number) {
    super(message, 'OKLOG_ERR_GAVE_UP', { undelivered });
    this.name = 'GaveUpError';
    this.undelivered = undelivered;
  }
}

export const WARN_EVERY_MS = 10_000;

export interface RetryingOptions {
  log: Logger;
  /** How many ingesters there are: the first warning comes once each has failed. */
  targets: number;
  /** 0: never give up. */
  giveUpMs: number;
  /** The warning's message, e.g. `no ingester reachable; still retrying`. */
  message: string;
  now?: () => number;
}

export class Retrying {
  private failingSince: number | null = null;
  private readonly errors = new Map<string, string>();
  private lastWarn = Number.NEGATIVE_INFINITY;
  private failuresSinceWarn = 0;
  private warned = false;
  private readonly now: () => number;

  constructor(private readonly o: RetryingOptions) {
    this.now = o.now ?? Date.now;
  }

  /** An ingester worked: the failure period (and the give-up clock) ends. */
  success(target: string): void {
    if (this.warned) this.o.log.info('ingester reachable again', { target });
    this.failingSince = null;
    this.errors.clear();
    this.failuresSinceWarn = 0;
    this.warned = false;
    this.lastWarn = Number.NEGATIVE_INFINITY;
  }

  /** Notes a failed attempt; warns (rate-limited) once every ingester has failed. */
  failure(target: string, err: unknown, fields: Record<string, unknown> = {}): void {
    const now = this.now();
    this.failingSince ??= now;
    this.errors.set(target, describeError(err));
    this.failuresSinceWarn++;
    this.o.log.debug('attempt failed', { target, err: describeError(err) });
    // Several ingesters: one failing is a failover, not news. Warn once all of them have failed.
    if (this.errors.size < this.o.targets) return;
    if (now - this.lastWarn < WARN_EVERY_MS) return;
    this.o.log.warn(this.o.message, {
      ingesters: this.describe(),
      failed_attempts: this.failuresSinceWarn,
      failing_for: formatDuration(now - this.failingSince),
      ...fields,
      give_up: this.o.giveUpMs > 0 ? formatDuration(this.o.giveUpMs) : 'never',
    });
    this.lastWarn = now;
    this.failuresSinceWarn = 0;
    this.warned = true;
  }

  /** True once failing for at least `-give-up`. */
  get expired(): boolean {
    return (
      this.o.giveUpMs > 0 && this.failingSince !== null && this.now() - this.failingSince >= this.o.giveUpMs
    );
  }

  /** How long a retry may sleep without overshooting the give-up deadline. */
  capSleep(ms: number): number {
    if (this.o.giveUpMs <= 0 || this.failingSince === null) return ms;
    return Math.max(0, Math.min(ms, this.failingSince + this.o.giveUpMs - this.now()));
  }

  /** `gave up after 10s: no ingester reachable (a: refused; b: timeout); 3 record(s) not delivered`. */
  gaveUp(what: string, undelivered: number): GaveUpError {
    return new GaveUpError(
      `gave up after ${formatDuration(this.o.giveUpMs)} (-give-up): ${what} (${this.describe()}); ` +
        `${undelivered} record(s) not delivered`,
      undelivered,
    );
  }

  private describe(): string {
    return [...this.errors].map(([t, e]) => `${t}: ${e}`).join('; ');
  }
}
