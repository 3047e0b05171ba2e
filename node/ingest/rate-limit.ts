// A rate-limited log line: an abusive client (say, a stream of oversized lines) must not be able to
// flood the node's log.
import type { Logger } from 'pino';

/** Logs at most one line per `everyMs`, reporting how many were suppressed in between. */
export class RateLimitedLog {
  private last = -Infinity;
  private suppressed = 0;
  constructor(
    private readonly logger: Logger,
    private readonly everyMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}
  warn(obj: Record<string, unknown>, msg: string): void {
    const t = this.now();
    if (t - this.last < this.everyMs) {
      this.suppressed++;
      return;
    }
    this.last = t;
    this.logger.warn({ ...obj, suppressed: this.suppressed }, msg);
    this.suppressed = 0;
  }
}
