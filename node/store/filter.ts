// Record filters for queries and streams (reference §4.8), with OK Log's regex bugs fixed:
// the text matched is topic + payload WITHOUT the trailing newline (so `$` matches at end of
// line), regexes run on V8's linear-time engine after translation from Go syntax with their size
// capped (regex.ts), and a topic filter selects records of one topic exactly.
import { setFlagsFromString } from 'node:v8';
import { InvalidArgumentError } from '../../shared/errors.ts';
import { isValidTopic, RECORD_PREFIX_LENGTH, SPACE } from '../../shared/record.ts';
import { InvalidRegexError, translateGoRegex } from './regex.ts';

// V8's non-backtracking engine (the `l` flag) guarantees linear time, like RE2. It must be
// enabled before the first `l` RegExp is built; enabling it is idempotent.
setFlagsFromString('--enable-experimental-regexp-engine');

export interface FilterSpec {
  /** Search term; empty matches everything. */
  q: string;
  regex: boolean;
  /** Only records of this topic (undefined: every topic). */
  topic?: string;
}

/** Decides whether the record in `buf[start..end)` (newline excluded) matches. */
export type RecordMatcher = (buf: Buffer, start: number, end: number) => boolean;

export { InvalidRegexError };

/** Patterns this thread has compiled: a query compiles its regex once (tests count them). */
export const regexCompilations = { count: 0 };

/**
 * Compiles a Go RE2 pattern for the linear engine (see regex.ts: captures dropped, `(?i)` and
 * other Go syntax translated, size capped); a pattern it cannot run in linear time is refused
 * with InvalidRegexError (400), naming the construct.
 */
export function compileLinearRegex(pattern: string): RegExp {
  regexCompilations.count++;
  const { source } = translateGoRegex(pattern);
  try {
    return new RegExp(source, 'l');
  } catch (err) {
    // "Invalid regular expression: /<translated source>/l: <reason>": the reason, without the
    // translated source the user never wrote.
    const msg = (err as Error).message;
    const reason = msg.slice(msg.lastIndexOf(': ') + 2) || msg;
    throw new InvalidRegexError(
      pattern,
      /linear/i.test(reason) ? `${reason} (the pattern needs a backtracking engine)` : reason,
    );
  }
}

/** `regex` query parameter: present without a value or with a true value means true; `false`, `0`, `no`, `off` mean false. */
export function parseRegexParam(value: string | undefined): boolean {
  if (value === undefined) return false;
  const v = value.trim().toLowerCase();
  return !(v === 'false' || v === '0' || v === 'no' || v === 'off');
}

export function validateTopic(topic: string | undefined): string | undefined {
  if (topic === undefined || topic === '') return undefined;
  if (!isValidTopic(topic))
    throw new InvalidArgumentError(`invalid topic ${JSON.stringify(topic)}`, { topic });
  return topic;
}

export function compileFilter(spec: FilterSpec): RecordMatcher {
  const topic = validateTopic(spec.topic);
  const topicBuf = topic === undefined ? null : Buffer.from(`${topic} `, 'latin1');
  const topicOk: RecordMatcher = topicBuf
    ? (buf, start, end) => {
        const s = start + RECORD_PREFIX_LENGTH;
        return (
          end - s >= topicBuf.length &&
          buf.compare(topicBuf, 0, topicBuf.length, s, s + topicBuf.length) === 0
        );
      }
    : () => true;

  if (spec.q === '') {
    return topicBuf
      ? (buf, start, end) => end - start > RECORD_PREFIX_LENGTH - 1 && topicOk(buf, start, end)
      : (buf, start, end) =>
          end - start >= RECORD_PREFIX_LENGTH - 1 && buf[start + RECORD_PREFIX_LENGTH - 1] === SPACE;
  }
  if (spec.regex) {
    const re = compileLinearRegex(spec.q);
    return (buf, start, end) => {
      if (end - start < RECORD_PREFIX_LENGTH || !topicOk(buf, start, end)) return false;
      return re.test(buf.toString('utf8', start + RECORD_PREFIX_LENGTH, end));
    };
  }
  const needle = Buffer.from(spec.q, 'utf8');
  return (buf, start, end) => {
    const s = start + RECORD_PREFIX_LENGTH;
    if (end - s < needle.length || !topicOk(buf, start, end)) return false;
    // subarray bounds the search to this record (no copy), so a miss never scans past it.
    return buf.subarray(s, end).indexOf(needle) >= 0;
  };
}
