// Queries in progress at shutdown. A stopping node first lets the cluster learn that it is leaving
// (peers stop sending it node queries), then refuses new queries with 503 and gives those in
// progress a grace period to finish before the scan workers and the log close under them: a user
// whose query was running when the operator restarted a node gets the whole answer, not a body cut
// short. A client that reads too slowly for the grace is cut, as before.
import { StoreClosedError } from './errors.ts';

export class QueryGate {
  private running = 0;
  private closing: Promise<number> | null = null;
  private onIdle: (() => void) | null = null;

  /** Queries in progress (user and node queries). */
  get active(): number {
    return this.running;
  }

  /** Admits a query, or throws StoreClosedError (503) once closing has begun. */
  enter(): void {
    if (this.closing !== null) throw new StoreClosedError();
    this.running++;
  }

  /** A query admitted by enter() has ended (answered, failed or cut). */
  leave(): void {
    this.running--;
    if (this.running === 0) this.onIdle?.();
  }

  /**
   * Refuses new queries from now on and resolves once those in progress have ended, or when
   * `graceMs` has passed: to the number still running then (they are cut by what closes next).
   * Idempotent: later calls return the first call's promise.
   */
  close(graceMs: number): Promise<number> {
    this.closing ??= new Promise<number>((resolve) => {
      if (this.running === 0) {
        resolve(0);
        return;
      }
      const timer = setTimeout(() => {
        this.onIdle = null;
        resolve(this.running);
      }, graceMs);
      this.onIdle = () => {
        clearTimeout(timer);
        this.onIdle = null;
        resolve(0);
      };
    });
    return this.closing;
  }
}
