// Query parameters (reference §4.6–4.8) with OK Log's parsing bugs fixed: `from`/`to` are a
// strict ULID or RFC 3339 (a 26-character timestamp is not misread as a ULID), a `to` time covers
// its whole last millisecond, `regex=false` means false. Additions: `topic`, `limit`, and `now` or
// a duration ("that long ago") as a bound.
import { InvalidArgumentError } from '../../shared/errors.ts';
import { formatRfc3339Seconds, isDuration, parseDuration, parseRfc3339 } from '../../shared/time.ts';
import { maxUlidAt, minUlidAt, parseUlid, ULID_LENGTH, ulidTime } from '../../shared/ulid.ts';
import { compileFilter, parseRegexParam, validateTopic } from './filter.ts';
import { ulidBytes } from './lines.ts';
import type { ScanFilter } from './segment-reader.ts';

export interface QueryParams {
  /** Inclusive bounds as canonical ULIDs. */
  from: string;
  to: string;
  /** The bounds as OK Log reports them: RFC 3339, second precision. */
  fromText: string;
  toText: string;
  q: string;
  regex: boolean;
  topic: string | undefined;
  /** Most records to return (after merge and dedupe), null for all. */
  limit: number | null;
  /** A bound was relative (`now`, a duration): resolved with this node's clock. */
  relative?: boolean;
  /**
   * `_query` only, internal (`ulids=true`): answer with each matching record's ULID and a
   * newline instead of the record. A fan-out HEAD counts distinct records with it, moving 27
   * bytes per match instead of whole records.
   */
  ulids?: boolean;
}

/** Go's RFC 3339 formatting at second precision, keeping the offset the caller wrote. */
function formatWithOffset(value: string, ms: number): string {
  const m = /([+-])(\d{2}):(\d{2})$/.exec(value);
  if (!m) return formatRfc3339Seconds(ms);
  const off = (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) * 60_000;
  const local = new Date(Math.floor((ms + off) / 1000) * 1000).toISOString().slice(0, 19);
  return `${local}${m[0]}`;
}

function parseBound(
  name: 'from' | 'to',
  value: string | null,
  now: number,
): { ulid: string; text: string; relative?: boolean } {
  const fail = () =>
    new InvalidArgumentError(`parsing '${name}': ${value ?? ''}: can't parse as ULID or RFC3339 time`, {
      param: name,
    });
  if (value === null || value === '') throw fail();
  if (value.length === ULID_LENGTH) {
    try {
      const ulid = parseUlid(value);
      return { ulid, text: formatRfc3339Seconds(ulidTime(ulid)) };
    } catch {
      // not a ULID: maybe a 26-character timestamp such as 2018-01-01T00:00:00.12345Z
    }
  }
  let ms = parseRfc3339(value);
  let text: string;
  let relative = false;
  if (ms !== null) text = formatWithOffset(value, ms);
  else {
    relative = true;
    // Beyond OK Log: `now` and durations meaning "that long ago" (`5m`, `2d`), as the CLI takes.
    const v = value.trim().toLowerCase();
    if (v === 'now') ms = now;
    else if (isDuration(v)) ms = now - Math.abs(parseDuration(v));
    else throw fail();
    text = formatRfc3339Seconds(ms);
  }
  // A time bound covers its whole millisecond: `to` takes the largest ULID of it (§11.2 item 4).
  return { ulid: name === 'from' ? minUlidAt(ms) : maxUlidAt(ms), text, relative };
}

function parseLimit(value: string | null): number | null {
  if (value === null || value === '') return null;
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value)))
    throw new InvalidArgumentError(`parsing 'limit': ${value}: must be a positive integer`, {
      param: 'limit',
    });
  return Number(value);
}

/** A parsed query and its compiled filter. */
export interface ParsedQuery {
  params: QueryParams;
  filter: ScanFilter;
}

/**
 * Parses a raw query string (`from=…&to=…`) and compiles its filter, once: a regex can take
 * milliseconds to translate and compile, on the thread that answers every request. Throws
 * InvalidArgumentError (→ 400), an invalid regex included, before any work starts.
 */
export function parseQuery(rawQuery: string, now: number = Date.now()): ParsedQuery {
  const params = parseParams(rawQuery, now);
  return { params, filter: compileScanFilter(params) };
}

/** parseQuery without the filter (which is still compiled: an invalid regex is a 400 here too). */
export function parseQueryParams(rawQuery: string, now: number = Date.now()): QueryParams {
  return parseQuery(rawQuery, now).params;
}

function parseParams(rawQuery: string, now: number): QueryParams {
  const sp = new URLSearchParams(rawQuery);
  const from = parseBound('from', sp.get('from'), now);
  const to = parseBound('to', sp.get('to'), now);
  const q = sp.get('q') ?? '';
  const regex = sp.has('regex') && parseRegexParam(sp.get('regex') ?? '');
  const topic = validateTopic(sp.get('topic') ?? undefined);
  const limit = parseLimit(sp.get('limit'));
  const params: QueryParams = {
    from: from.ulid,
    to: to.ulid,
    fromText: from.text,
    toText: to.text,
    q,
    regex,
    topic,
    limit,
    relative: from.relative === true || to.relative === true,
    ulids: sp.get('ulids') === 'true',
  };
  return params;
}

/**
 * The query string to send to the nodes: as received, except that relative bounds are replaced
 * by the ULIDs resolved here, so every node queries the same range whatever its clock, and that
 * `ulids` is dropped: it is internal to `_query`, and a user's `ulids=true` passed on would have
 * the peers answer ULIDs where records are expected (the caller adds it when it means it).
 */
export function forwardedQuery(rawQuery: string, p: QueryParams): string {
  const sp = new URLSearchParams(rawQuery);
  if (!p.relative && !sp.has('ulids')) return rawQuery;
  sp.delete('ulids');
  if (p.relative) {
    sp.set('from', p.from);
    sp.set('to', p.to);
  }
  return sp.toString();
}

type FilterTerms = Pick<QueryParams, 'q' | 'regex' | 'topic'>;

/** What a scan filter holds besides its time bounds: everything compiling costs. */
type CompiledTerms = Pick<ScanFilter, 'matcher' | 'needle' | 'all' | 'costly'>;

/** Compiles a filter's terms (InvalidRegexError → 400); the time bounds are added per scan. */
export function compileFilterTerms(p: FilterTerms): CompiledTerms {
  const matcher = compileFilter({ q: p.q, regex: p.regex, topic: p.topic });
  let needle: Buffer | null = null;
  if (p.q !== '' && !p.regex) needle = Buffer.from(p.q, 'utf8');
  else if (p.topic !== undefined) needle = Buffer.from(`${p.topic} `, 'latin1');
  return { matcher, needle, all: p.q === '' && p.topic === undefined, costly: p.regex && p.q !== '' };
}

function withBounds(t: CompiledTerms, p: Pick<QueryParams, 'from' | 'to'>): ScanFilter {
  return { ...t, from: ulidBytes(p.from), to: ulidBytes(p.to), skipMalformed: true };
}

/** The filter a segment scan applies; compiles the regex (InvalidRegexError → 400). */
export function compileScanFilter(p: QueryParams): ScanFilter {
  return withBounds(compileFilterTerms(p), p);
}

/**
 * Scan filters by their terms (q, regex, topic), the most recently used `max` kept. A scan worker
 * gets a query's terms with every scan, one per segment file or byte range: compiled once, not
 * per scan (a regex at the caps costs milliseconds to compile, time no slice accounts for).
 */
export class ScanFilterCache {
  private readonly byTerms = new Map<string, CompiledTerms>();
  constructor(
    private readonly max = 64,
    private readonly compile: (p: FilterTerms) => CompiledTerms = compileFilterTerms,
  ) {}

  get size(): number {
    return this.byTerms.size;
  }

  /** Throws what compiling throws (nothing is cached then). */
  get(p: FilterTerms & Pick<QueryParams, 'from' | 'to'>): ScanFilter {
    const key = JSON.stringify([p.q, p.regex, p.topic ?? null]);
    let t = this.byTerms.get(key);
    if (t === undefined) {
      t = this.compile(p);
      if (this.byTerms.size >= this.max) this.byTerms.delete(this.byTerms.keys().next().value as string);
    } else this.byTerms.delete(key); // re-inserted below: the Map's order is the recency order
    this.byTerms.set(key, t);
    return withBounds(t, p);
  }
}
