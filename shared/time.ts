// Time arguments as users type them: `now`, Go-style durations (`5m`, `1h30m`, `90s`, `1.5h`)
// plus days (`2d`) meaning "that long ago", or RFC 3339 timestamps.
import { InvalidArgumentError, InvalidTimeError } from './errors.ts';

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};
const DURATION_PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)/y;

/** Parses a Go duration (with `d` for days) into milliseconds; the sign is kept. */
export function parseDuration(value: string): number {
  let s = value.trim();
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    if (s[0] === '-') sign = -1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') throw new InvalidArgumentError(`invalid duration ${JSON.stringify(value)}`, { value });
  let total = 0;
  DURATION_PART.lastIndex = 0;
  let pos = 0;
  while (pos < s.length) {
    DURATION_PART.lastIndex = pos;
    const m = DURATION_PART.exec(s);
    if (!m) throw new InvalidArgumentError(`invalid duration ${JSON.stringify(value)}`, { value });
    total += Number.parseFloat(m[1]) * UNIT_MS[m[2]];
    pos = DURATION_PART.lastIndex;
  }
  return sign * total;
}

export function isDuration(value: string): boolean {
  try {
    parseDuration(value);
    return true;
  } catch {
    return false;
  }
}

/** Formats milliseconds as a Go duration string (`1h30m0s`, `2.316ms`, `3s`). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  const neg = ms < 0;
  let v = Math.abs(ms);
  let out: string;
  if (v < 1) {
    const us = v * 1000;
    out = us < 1 ? `${trim(us * 1000)}ns` : `${trim(us)}µs`;
  } else if (v < 1000) {
    out = `${trim(v)}ms`;
  } else {
    const h = Math.floor(v / 3_600_000);
    v -= h * 3_600_000;
    const m = Math.floor(v / 60_000);
    v -= m * 60_000;
    const s = trim(v / 1000);
    out = h > 0 ? `${h}h${m}m${s}s` : m > 0 ? `${m}m${s}s` : `${s}s`;
  }
  return neg ? `-${out}` : out;
}

function trim(n: number): string {
  return String(Number.parseFloat(n.toFixed(9)));
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

/** Parses an RFC 3339 timestamp (fractional seconds allowed) to Unix milliseconds, or null. */
export function parseRfc3339(value: string): number | null {
  const m = RFC3339.exec(value);
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  // As Go's time.Parse: a day that does not exist in its month (2024-02-30, 2023-02-29) and a
  // 60th second are errors, not silently rolled over into the next month or minute.
  if (+mo < 1 || +mo > 12 || +d < 1 || +d > daysInMonth(+y, +mo) || +h > 23 || +mi > 59 || +s > 59)
    return null;
  if (zone.length > 1 && (+zone.slice(1, 3) > 23 || +zone.slice(4, 6) > 59)) return null;
  const fracMs = frac ? Math.floor(Number.parseFloat(`0${frac}`) * 1000) : 0;
  // Date.UTC maps years 0-99 to 1900-1999; setUTCFullYear takes the year as written.
  const date = new Date(Date.UTC(2000, +mo - 1, +d, +h, +mi, +s, 0));
  date.setUTCFullYear(+y);
  let ms = date.getTime() + fracMs;
  if (zone !== 'Z' && zone !== 'z') {
    const offSign = zone[0] === '-' ? -1 : 1;
    const [oh, om] = zone.slice(1).split(':').map(Number);
    ms -= offSign * (oh * 60 + om) * 60_000;
  }
  return Number.isFinite(ms) ? ms : null;
}

/**
 * A user time argument → Unix milliseconds. `now` (any case), a duration meaning that long ago
 * (sign ignored, as OK Log does), or RFC 3339.
 */
export function parseTimeArg(value: string, now: number = Date.now(), what = 'time'): number {
  const v = value.trim();
  if (v.toLowerCase() === 'now') return now;
  if (isDuration(v)) return now - Math.abs(parseDuration(v));
  const t = parseRfc3339(v);
  if (t === null) throw new InvalidTimeError(value, what);
  return t;
}

/** RFC 3339 with second precision in UTC (`2024-01-02T03:04:05Z`). */
export function formatRfc3339Seconds(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}
