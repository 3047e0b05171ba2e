// Lifeguard's suspicion timer: a suspect node is declared dead after a timeout that starts at
// `max` and shrinks towards `min` as independent peers confirm the suspicion (k expected).
import type { Clock, TimerHandle } from './clock.ts';

/** min = SuspicionMult × max(1, log10(max(1, n))) × ProbeInterval (memberlist's suspicionTimeout). */
export function suspicionTimeout(suspicionMult: number, n: number, intervalMs: number): number {
  const nodeScale = Math.max(1, Math.log10(Math.max(1, n)));
  return Math.floor((suspicionMult * Math.floor(nodeScale * 1000) * intervalMs) / 1000);
}

/** Time left after `elapsed` ms with `n` of `k` confirmations. */
export function remainingSuspicionTime(
  n: number,
  k: number,
  elapsed: number,
  min: number,
  max: number,
): number {
  const frac = Math.log(n + 1) / Math.log(k + 1);
  const raw = max - frac * (max - min);
  const timeout = Math.max(min, Math.floor(raw));
  return timeout - elapsed;
}

export class Suspicion {
  private n = 0;
  private readonly start: number;
  private timer: TimerHandle | null;
  private fired = false;
  private readonly confirmations = new Set<string>();

  constructor(
    from: string,
    private readonly k: number,
    private readonly min: number,
    private readonly max: number,
    private readonly clock: Clock,
    private readonly onTimeout: (confirmations: number) => void,
  ) {
    this.confirmations.add(from);
    this.start = clock.now();
    this.timer = clock.setTimeout(() => this.fire(), k < 1 ? min : max);
  }

  private fire(): void {
    if (this.fired) return;
    this.fired = true;
    this.timer = null;
    this.onTimeout(this.n);
  }

  /** Registers a confirmation from a new peer; true when it was new and counted. */
  confirm(from: string): boolean {
    if (this.n >= this.k) return false;
    if (this.confirmations.has(from)) return false;
    this.confirmations.add(from);
    this.n++;
    if (this.fired) return true;
    const remaining = remainingSuspicionTime(
      this.n,
      this.k,
      this.clock.now() - this.start,
      this.min,
      this.max,
    );
    this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => this.fire(), Math.max(0, remaining));
    return true;
  }

  cancel(): void {
    this.fired = true;
    this.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  get confirmationCount(): number {
    return this.n;
  }
}
