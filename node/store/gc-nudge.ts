// Streaming a large result allocates a steady flow of short-lived Buffers whose memory lives
// outside the JS heap. V8 collects them only once ~64 MiB of such external memory has piled up per
// isolate (or when the small JS heap fills, which a streaming loop rarely does), so RSS plateaus
// far above what is in use. A minor GC (scavenge, ~1 ms) every few MiB streamed frees them early.
import { setFlagsFromString } from 'node:v8';
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

/** Counts bytes streamed and runs a minor GC every `everyBytes`. */
export class GcNudge {
  private bytes = 0;
  constructor(private readonly everyBytes = 16 << 20) {}
  add(n: number): void {
    this.bytes += n;
    if (this.bytes < this.everyBytes) return;
    this.bytes = 0;
    getGc()?.({ type: 'minor' });
  }
}
