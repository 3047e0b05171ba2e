// Streaming a large result allocates a steady flow of short-lived Buffers whose memory lives
// outside the JS heap. V8 collects them only once ~64 MiB of such external memory has piled up per
// isolate (or when the small JS heap fills, which a streaming loop rarely does), so RSS plateaus
// far above what is in use. A minor GC (scavenge, ~1 ms) every few MiB streamed frees them early.
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type GcFn = (opts?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async' }) => void;

let gcFn: GcFn | null | undefined;

function getGc(): GcFn | null {
  if (gcFn !== undefined) return gcFn;
  try {
    // Exposes `gc` to contexts created from now on; the flag changes nothing else.
    setFlagsFromString('--expose-gc');
    gcFn = runInNewContext('gc') as GcFn;
  } catch {
    gcFn = null;
  }
  return gcFn;
}

/**
 * External memory that may pile up beyond what survived the last full collection before one is
 * forced. Buffers that live a while (queued for slow clients) are promoted and only a full
 * collection frees them; V8 waits for some 64 MiB of them, on every isolate.
 */
const MAJOR_AFTER_BYTES = 32 << 20;
let externalFloor = 0;

/**
 * Counts bytes streamed and runs a minor GC every `everyBytes`; a full one when external memory
 * has grown by MAJOR_AFTER_BYTES since the last (a fast stream's buffers die young and never get
 * there: its cost stays a minor GC per 16 MiB).
 */
export class GcNudge {
  private bytes = 0;
  constructor(private readonly everyBytes = 16 << 20) {}
  add(n: number): void {
    this.bytes += n;
    if (this.bytes < this.everyBytes) return;
    this.bytes = 0;
    const gc = getGc();
    if (gc === null) return;
    gc({ type: 'minor' });
    if (getHeapStatistics().external_memory > externalFloor + MAJOR_AFTER_BYTES) {
      gc({ type: 'major', execution: 'sync' });
      gc({ type: 'major', execution: 'sync' });
      externalFloor = getHeapStatistics().external_memory;
    }
  }
}

/**
 * A full collection now, where `gc` can be reached (a scan worker gone idle: the buffers it
 * dropped are freed now rather than whenever V8 next feels memory pressure, which an idle
 * thread never does).
 */
export function collectGarbage(): void {
  const gc = getGc();
  // Twice: V8 sweeps dead ArrayBuffers' memory after a collection and frees it at the next one.
  // `execution: 'sync'`: without it the options form only schedules the collection.
  gc?.({ type: 'major', execution: 'sync' });
  gc?.({ type: 'major', execution: 'sync' });
}

/**
 * A full collection once the node has had no query for `delayMs`: the read-ahead and response
 * buffers of finished queries are external memory that V8 frees only at a collection, and an
 * idle process does not collect, so RSS would stay at its high-water mark.
 */
export class IdleCollector {
  private active = 0;
  private timer: NodeJS.Timeout | null = null;
  constructor(private readonly delayMs = 1000) {}

  begin(): void {
    this.active++;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  end(): void {
    if (--this.active > 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.active === 0) collectGarbage();
    }, this.delayMs);
    this.timer.unref();
  }
}
