// Rate limiting for warnings that a broken condition would otherwise repeat every tick (a store
// node short, an ingester down): the first occurrence logs at once, later ones at most every
// `everyMs` per key, reporting how many were suppressed in between.
export class LogLimiter {
  private readonly last = new Map<string, { at: number; suppressed: number }>();
  constructor(
    private readonly everyMs: number,
    private readonly now: () => number = Date.now,
    private readonly maxKeys = 256,
  ) {}

  /** null: stay quiet; a number: log now, this many occurrences were suppressed since the last. */
  take(key: string): number | null {
    const t = this.now();
    const e = this.last.get(key);
    if (e !== undefined && t - e.at < this.everyMs) {
      e.suppressed++;
      return null;
    }
    const suppressed = e?.suppressed ?? 0;
    this.last.delete(key);
    this.last.set(key, { at: t, suppressed: 0 });
    if (this.last.size > this.maxKeys) this.last.delete(this.last.keys().next().value as string);
    return suppressed;
  }

  /** The condition cleared: the next occurrence logs at once. */
  reset(key: string): void {
    this.last.delete(key);
  }
}
