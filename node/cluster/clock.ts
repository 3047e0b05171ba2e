// Time and randomness, injected so the protocol can run on simulated time in tests.

export type TimerHandle = { readonly id: number } | NodeJS.Timeout;

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(h: TimerHandle | null | undefined): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, Math.max(0, ms)),
  clearTimeout: (h) => {
    if (h) clearTimeout(h as NodeJS.Timeout);
  },
};

/** A number in [0, 1). */
export type Random = () => number;

/** A uniformly random integer in [0, n). */
export function randomInt(random: Random, n: number): number {
  return n <= 0 ? 0 : Math.min(n - 1, Math.floor(random() * n));
}

/** Fisher–Yates in place. */
export function shuffle<T>(random: Random, a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = randomInt(random, i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** Resolves after `ms` on `clock`. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms));
}
