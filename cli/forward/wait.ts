// Waiting for the first of several events without leaking. `Promise.race` against a long-lived
// pending promise (an abort, a connection close) attaches a reaction that lives until that promise
// settles, so racing it on every write of a forwarder that runs for weeks grows memory without
// bound. Here every waiter is a subscription that is removed as soon as any of them fires.

/** Registers `wake`; returns a function that unregisters it. May call `wake` synchronously. */
export type Subscribe = (wake: () => void) => () => void;

export function waitAny(...subs: Subscribe[]): Promise<void> {
  return new Promise((resolve) => {
    const offs: (() => void)[] = [];
    let done = false;
    const wake = () => {
      if (done) return;
      done = true;
      for (const off of offs) off();
      resolve();
    };
    for (const sub of subs) {
      const off = sub(wake);
      if (done) off();
      else offs.push(off);
    }
  });
}

export function onAbort(signal: AbortSignal): Subscribe {
  return (wake) => {
    if (signal.aborted) {
      wake();
      return () => {};
    }
    signal.addEventListener('abort', wake, { once: true });
    return () => signal.removeEventListener('abort', wake);
  };
}

/** A promise that settles soon (a write, a request); its one reaction goes away with it. */
export function onSettled(p: Promise<unknown>): Subscribe {
  return (wake) => {
    let active = true;
    p.then(
      () => active && wake(),
      () => active && wake(),
    );
    return () => {
      active = false;
    };
  };
}

export function onTimeout(ms: number): Subscribe {
  return (wake) => {
    const t = setTimeout(wake, ms);
    return () => clearTimeout(t);
  };
}

/** A set of one-shot callbacks, fired and cleared together. */
export class Waiters {
  private set = new Set<() => void>();

  subscribe: Subscribe = (wake) => {
    this.set.add(wake);
    return () => this.set.delete(wake);
  };

  fire(): void {
    const all = [...this.set];
    this.set.clear();
    for (const f of all) f();
  }
}
