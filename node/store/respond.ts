// Writing a record stream to an HTTP response: backpressure (wait for 'drain', never queue the
// result in memory), `limit` applied on line boundaries, counting for X-Oklog-Records-Matched, and
// stopping the upstream work as soon as the client goes away.
import type { ServerResponse } from 'node:http';
import { GcNudge } from './gc-nudge.ts';
import { countLines, offsetAfterLines } from './lines.ts';

const nudge = new GcNudge();

export interface WriteResult {
  records: number;
  bytes: number;
  /** False when the client went away before the end. */
  completed: boolean;
}

/**
 * Writes (or, with `res` null, only counts) the records of `source`, at most `limit` of them.
 * Leaving the loop early calls `return()` on the source, which closes files and peer requests.
 */
export async function pipeRecords(
  source: AsyncIterable<Buffer>,
  res: ServerResponse | null,
  limit: number | null,
  signal?: AbortSignal,
): Promise<WriteResult> {
  const r: WriteResult = { records: 0, bytes: 0, completed: true };
  for await (let chunk of source) {
    if (signal?.aborted || res?.destroyed) {
      r.completed = false;
      break;
    }
    let n = countLines(chunk);
    let last = false;
    if (limit !== null && r.records + n >= limit) {
      const keep = limit - r.records;
      if (keep < n) chunk = chunk.subarray(0, offsetAfterLines(chunk, keep));
      n = keep;
      last = true;
    }
    r.records += n;
    r.bytes += chunk.length;
    nudge.add(chunk.length);
    if (res !== null && chunk.length > 0 && !res.write(chunk)) {
      await drained(res);
      if (res.destroyed && !res.writableFinished) {
        r.completed = false;
        break;
      }
    }
    if (last) break;
  }
  // A source stopped by the abort ends like a finished one: the answer is not complete.
  if (signal?.aborted) r.completed = false;
  return r;
}

/** Resolves on 'drain' or 'close', leaving no listener behind (this runs once per full buffer). */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/** Aborts `ac` when the client closes the connection before the response is complete. */
export function abortWhenGone(res: ServerResponse, ac: AbortController): void {
  res.once('close', () => {
    if (!res.writableFinished) ac.abort();
  });
}
