// The largest ingest segment a store node's consumer reads into memory. Its own module, with no
// imports, so that `oklog ingest` (which loads no store code) can check its flags against it.

/** No store node reads less than this (ingest nodes cut at 16 MiB, bulk uploads at 64 MiB). */
export const MIN_SEGMENT_LIMIT = 512 * 1024 * 1024;

/**
 * The largest ingest segment a consumer reads into memory: the target size, but at least 512 MiB.
 * Larger ones are quarantined on their second attempt, streamed to disk (consumer.ts).
 */
export function maxSegmentBytesFor(targetSize: number): number {
  return Math.max(targetSize, MIN_SEGMENT_LIMIT);
}
