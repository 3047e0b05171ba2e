// Exponential backoff between reconnect attempts: 16 ms doubling to a cap of 1024 ms, as OK Log,
// plus jitter so that many forwarders cut off by one ingester restart do not reconnect in step.

export class Backoff {
  private attempt = 0;

  constructor(
    private readonly initialMs = 16,
    private readonly maxMs = 1024,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt: half fixed, half random ("equal jitter"). */
  next(): number {
    const base = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return base / 2 + this.random() * (base / 2);
  }

  /** After a success: the next failure starts again from the initial delay. */
  reset(): void {
    this.attempt = 0;
  }
}

/** Sleeps `ms`, or less if `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
