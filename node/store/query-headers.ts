// The `X-Oklog-*` response headers of `/store/query` and `/store/_query` (reference §4.6), plus
// this implementation's additions: `X-Oklog-Records-Matched` and `X-Oklog-Failed-Nodes`.
import type { IncomingHttpHeaders } from 'node:http';
import { formatDuration } from '../../shared/time.ts';
import type { QueryParams } from './query-params.ts';

export const H = {
  from: 'X-Oklog-From',
  to: 'X-Oklog-To',
  q: 'X-Oklog-Q',
  regex: 'X-Oklog-Regex',
  nodesQueried: 'X-Oklog-Nodes-Queried',
  segmentsQueried: 'X-Oklog-Segments-Queried',
  maxDataSetSize: 'X-Oklog-Max-Data-Set-Size',
  errorCount: 'X-Oklog-Error-Count',
  duration: 'X-Oklog-Duration',
  recordsMatched: 'X-Oklog-Records-Matched',
  failedNodes: 'X-Oklog-Failed-Nodes',
} as const;

export interface QueryStats {
  nodesQueried: number;
  segmentsQueried: number;
  /** Bytes of the segment files selected on a node; the fan-out reports the largest node's. */
  maxDataSetSize: number;
  errorCount: number;
}

/**
 * A header value must be visible ASCII for every client to read it back unchanged; a term with
 * other characters is sent percent-encoded (encodeURIComponent), as the URL carried it.
 */
export function headerSafe(value: string): string {
  return /^[\x20-\x7e]*$/.test(value) ? value : encodeURIComponent(value);
}

export function queryHeaders(p: QueryParams, s: QueryStats, durationMs: number): Record<string, string> {
  return {
    [H.from]: p.fromText,
    [H.to]: p.toText,
    [H.q]: headerSafe(p.q),
    [H.regex]: String(p.regex),
    [H.nodesQueried]: String(s.nodesQueried),
    [H.segmentsQueried]: String(s.segmentsQueried),
    [H.maxDataSetSize]: String(s.maxDataSetSize),
    [H.errorCount]: String(s.errorCount),
    [H.duration]: formatDuration(durationMs),
  };
}

function intHeader(headers: IncomingHttpHeaders, name: string): number | null {
  const v = headers[name.toLowerCase()];
  if (typeof v !== 'string' || !/^\d+$/.test(v.trim())) return null;
  return Number(v);
}

/** A node's stats from its `_query` response headers; null if any is missing or unparsable. */
export function parseStatsHeaders(headers: IncomingHttpHeaders): QueryStats | null {
  const nodesQueried = intHeader(headers, H.nodesQueried);
  const segmentsQueried = intHeader(headers, H.segmentsQueried);
  const maxDataSetSize = intHeader(headers, H.maxDataSetSize);
  const errorCount = intHeader(headers, H.errorCount);
  if (nodesQueried === null || segmentsQueried === null || maxDataSetSize === null || errorCount === null)
    return null;
  return { nodesQueried, segmentsQueried, maxDataSetSize, errorCount };
}
