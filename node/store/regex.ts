// Go RE2 syntax (what OK Log users write) translated for V8's linear-time engine (the `l` flag),
// plus the limits that keep every pattern cheap.
//
// Why translate rather than pass the pattern through:
// - Capturing groups are never used (a filter only asks "does it match"), but the linear engine
//   tracks them for every thread of its NFA: `(a*)*` repeated 300 times cost ~80 ms per 52-byte
//   line, the same pattern without captures under 1 ms. Every group becomes `(?:…)`.
// - The linear engine has no `i` flag, and Go writes flags inline: `(?i)error`. Case-insensitive
//   parts are rewritten as classes of every case variant (`[eE][rR]…`), which the engine runs as
//   cheaply as literals. `(?m)` changes nothing here: a record's text never contains a newline,
//   so `^` and `$` mean the same with or without it. `(?s)` lets `.` match a newline too.
// - JavaScript's `.` never matches `\r`, U+2028 or U+2029; Go's matches everything but `\n`, and
//   records keep the `\r` of a CRLF line. `.` is emitted as `[^\n]` (`[^]` under `(?s)`).
// - Character classes are computed as sets of ranges (Go's ASCII `\s`, `\S`, `\w`, POSIX classes,
//   case folding, negation) and emitted as such: V8's linear engine matches every character with
//   a negated class that holds U+FFFF (`[^\u0080-\uffff]`), so a negated class is only emitted
//   when what it excludes lacks U+FFFF, otherwise as its positive complement.
// - Some Go constructs mean something else in JavaScript (`\z`, `\Q…\E`, `[]a]`, `[[:alpha:]]`,
//   `\s`, `\x{…}`, octal `\123`, stacked repetitions `a{2}*`) or are silently taken literally
//   (`\pL`): they are translated or refused.
// - The engine refuses counted repetitions beyond a small size (`[0-9a-f]{32}`); they are
//   expanded into copies, which it accepts.
//
// Linear time is linear in the input for a given pattern; the cost per byte grows with the size
// of the pattern's automaton (roughly its length and how many repetitions can be active at once).
// So patterns are capped: at most MAX_PATTERN_LENGTH characters as written, MAX_REPEATS repetition
// operators after expansion, MAX_COMPILED_LENGTH characters once translated. At the caps a record
// of ~100 bytes costs a few milliseconds at worst; common patterns cost microseconds.
import { InvalidArgumentError } from '../../shared/errors.ts';

export const MAX_PATTERN_LENGTH = 1024;
export const MAX_REPEATS = 32;
export const MAX_COMPILED_LENGTH = 8192;
/** Go's own limit on a counted repetition ({n,m}). */
const MAX_COUNT = 1000;

export class InvalidRegexError extends InvalidArgumentError {
  constructor(pattern: string, reason: string) {
    super(`compiling regex: ${reason}`, {
      pattern: pattern.length > 200 ? `${pattern.slice(0, 200)}…` : pattern,
    });
    this.name = 'InvalidRegexError';
  }
}

export interface TranslatedRegex {
  /** Source for `new RegExp(source, 'l')`. */
  source: string;
  /** Repetition operators after expansion (the complexity measure capped by MAX_REPEATS). */
  repeats: number;
}

// ---- case folding (Go's (?i) uses Unicode simple folding; here over single UTF-16 units) ----

interface FoldTable {
  /** Each cased code unit's orbit: the code units equal to it under simple folding, itself included. */
  orbits: Map<number, readonly number[]>;
  /** The cased code units, ascending (a few thousand of the 64 Ki). */
  cased: Uint16Array;
}

let foldTable: FoldTable | null = null;

/** Built once per thread, on the first case-insensitive pattern: a few milliseconds. */
function folding(): FoldTable {
  if (foldTable !== null) return foldTable;
  // Upper- and lower-case mappings group the code units (k, K and the Kelvin sign all lower to k).
  const byKey = new Map<number, number[]>();
  for (let u = 0; u < 0x10000; u++) {
    if (u >= 0xd800 && u <= 0xdfff) continue;
    const s = String.fromCharCode(u);
    const up = s.toUpperCase();
    const key = (up.length === 1 ? up : s).toLowerCase();
    if (key.length !== 1 || (key === s && up === s)) continue; // no case
    const k = key.charCodeAt(0);
    const list = byKey.get(k) ?? [k];
    byKey.set(k, list);
    if (!list.includes(u)) list.push(u);
  }
  const orbits = new Map<number, readonly number[]>();
  for (const [k, list] of byKey) {
    // Case mappings are not folding: dotless ı upper-cases to I, yet Go does not fold it with i.
    // A member other than the key and its upper case is kept only if the `iu` flags, which
    // compare by the simple folding Go uses (CaseFolding.txt C + S), say it equals the key.
    const up = String.fromCharCode(k).toUpperCase();
    let same: RegExp | null = null;
    const orbit = list.filter((u) => {
      if (u === k || (up.length === 1 && u === up.charCodeAt(0))) return true;
      same ??= new RegExp(`^\\u{${k.toString(16)}}$`, 'iu');
      return same.test(String.fromCharCode(u));
    });
    if (orbit.length > 1) for (const u of orbit) orbits.set(u, orbit);
  }
  const cased = Uint16Array.from([...orbits.keys()].sort((a, b) => a - b));
  foldTable = { orbits, cased };
  return foldTable;
}

/** Code units equal to `c` under simple case folding (including `c`), e.g. k, K and U+212A. */
function caseOrbit(c: number): readonly number[] {
  return folding().orbits.get(c) ?? [c];
}

// ---- character classes as sets of code-unit ranges ----

/** Inclusive [lo, hi] code-unit ranges. Normalized: ascending, disjoint, not adjacent. */
type Ranges = [number, number][];

function normalize(list: Ranges): Ranges {
  const sorted = [...list].sort((a, b) => a[0] - b[0]);
  const out: Ranges = [];
  for (const [lo, hi] of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** Every code unit not in `r` (normalized). */
function complement(r: Ranges): Ranges {
  const out: Ranges = [];
  let next = 0;
  for (const [lo, hi] of r) {
    if (lo > next) out.push([next, lo - 1]);
    next = hi + 1;
  }
  if (next <= 0xffff) out.push([next, 0xffff]);
  return out;
}

/**
 * `r` (normalized) with every case variant of its members. Walks the cased code units inside
 * each range, not every code unit of it: `[\u0001-\uffff]` repeated 300 times took 0.6 s that way.
 */
function folded(r: Ranges): Ranges {
  const { orbits, cased } = folding();
  const extra: Ranges = [];
  for (const [lo, hi] of r) {
    let k = lowerBound(cased, lo);
    for (; k < cased.length && cased[k] <= hi; k++)
      for (const v of orbits.get(cased[k]) as readonly number[]) if (v < lo || v > hi) extra.push([v, v]);
  }
  return extra.length === 0 ? r : normalize([...r, ...extra]);
}

/** Index of the first element of `a` that is at least `x`. */
function lowerBound(a: Uint16Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const SPECIAL = new Set('\\^$.|?*+()[]{}/-');
const SHORT: Record<number, string> = { 9: '\\t', 10: '\\n', 11: '\\v', 12: '\\f', 13: '\\r' };

/** A code unit as pattern text that matches exactly it, outside or inside a class. */
function lit(c: number): string {
  const ch = String.fromCharCode(c);
  if (SPECIAL.has(ch)) return `\\${ch}`;
  if (c in SHORT) return SHORT[c];
  if (c < 0x20 || c > 0x7e) return `\\u${c.toString(16).padStart(4, '0')}`;
  return ch;
}

function rangesText(r: Ranges): string {
  let s = '';
  for (const [lo, hi] of r)
    s += lo === hi ? lit(lo) : hi === lo + 1 ? lit(lo) + lit(hi) : `${lit(lo)}-${lit(hi)}`;
  return s;
}

/**
 * A class matching exactly `r` (normalized): its ranges, or `[^…]` of its complement when that is
 * shorter (`.` is `[^\n]`). A negated class is emitted only when what it excludes lacks U+FFFF:
 * V8's linear engine matches every character with one that holds it (`[^a\uffff]` matches `a`).
 */
function classOf(r: Ranges): string {
  const positive = `[${rangesText(r)}]`;
  if (r.length === 0 || r[r.length - 1][1] !== 0xffff) return positive;
  const negated = `[^${rangesText(complement(r))}]`;
  return negated.length < positive.length ? negated : positive;
}

// ---- POSIX classes inside brackets (ASCII, as in Go) ----

const POSIX: Record<string, [number, number][]> = {
  alnum: [
    [0x30, 0x39],
    [0x41, 0x5a],
    [0x61, 0x7a],
  ],
  alpha: [
    [0x41, 0x5a],
    [0x61, 0x7a],
  ],
  ascii: [[0x00, 0x7f]],
  blank: [
    [0x09, 0x09],
    [0x20, 0x20],
  ],
  cntrl: [
    [0x00, 0x1f],
    [0x7f, 0x7f],
  ],
  digit: [[0x30, 0x39]],
  graph: [[0x21, 0x7e]],
  lower: [[0x61, 0x7a]],
  print: [[0x20, 0x7e]],
  punct: [
    [0x21, 0x2f],
    [0x3a, 0x40],
    [0x5b, 0x60],
    [0x7b, 0x7e],
  ],
  space: [
    [0x09, 0x0d],
    [0x20, 0x20],
  ],
  upper: [[0x41, 0x5a]],
  word: [
    [0x30, 0x39],
    [0x41, 0x5a],
    [0x5f, 0x5f],
    [0x61, 0x7a],
  ],
  xdigit: [
    [0x30, 0x39],
    [0x41, 0x46],
    [0x61, 0x66],
  ],
};

/**
 * Go's Perl classes, all ASCII. Go's \s is `[\t\n\f\r ]`: JavaScript's includes \v and Unicode
 * spaces, and its \S (which excludes them) would pass through a class unchanged.
 */
const PERL: Record<string, Ranges> = {
  d: POSIX.digit,
  s: [
    [0x09, 0x0a],
    [0x0c, 0x0d],
    [0x20, 0x20],
  ],
  w: POSIX.word,
};

/** `\d`, `\D`, `\s`, … as ranges; as in Go, a negated one is the complement of the folded class. */
function perlClass(e: string, fold: boolean): Ranges {
  const r = fold ? folded(PERL[e.toLowerCase()]) : PERL[e.toLowerCase()];
  return e === e.toUpperCase() ? complement(r) : r;
}

/** Every code unit but `\n` (Go's `.`), and every code unit (`.` under `(?s)`). */
const NOT_NEWLINE: Ranges = complement([[0x0a, 0x0a]]);
const ANY: Ranges = [[0, 0xffff]];

interface Flags {
  /** Case-insensitive. */
  i: boolean;
  /** `.` matches `\n` too. */
  s: boolean;
  /** Ungreedy: `*` is lazy and `*?` greedy. */
  U: boolean;
}

interface Frame {
  flags: Flags;
  /** Where the group starts in the output (its `(?:`). */
  start: number;
  /** Repeats counted when the group opened. */
  repeats: number;
}

/**
 * Translates a Go RE2 pattern; throws InvalidRegexError (a 400) naming the construct when it
 * cannot be run on the linear engine or exceeds the limits.
 */
export function translateGoRegex(pattern: string): TranslatedRegex {
  const refuse = (reason: string): never => {
    throw new InvalidRegexError(pattern, reason);
  };
  if (pattern.length > MAX_PATTERN_LENGTH)
    refuse(
      `pattern is ${pattern.length} characters long, at most ${MAX_PATTERN_LENGTH} are allowed (a long pattern makes every record slow to match)`,
    );

  const n = pattern.length;
  let i = 0;
  let out = '';
  let repeats = 0;
  let flags: Flags = { i: false, s: false, U: false };
  const stack: Frame[] = [];
  // The last atom emitted (what a quantifier applies to): its start in `out` and the repeats
  // inside it; -1 when there is none (start, after `(`, `|`, an anchor or a quantifier).
  let atomStart = -1;
  let atomRepeats = 0;
  // The quantifier just read (`*`, `{2}`, `+?`), '' when the last token was something else: Go
  // refuses a quantifier on a quantifier (`a**`, `a{2}{3}`), which would mean something here.
  let lastRepeat = '';

  const emitAtom = (text: string, innerRepeats = 0) => {
    atomStart = out.length;
    atomRepeats = innerRepeats;
    out += text;
  };
  const literal = (c: number) => {
    if (!flags.i) return emitAtom(lit(c));
    const o = caseOrbit(c);
    emitAtom(o.length === 1 ? lit(c) : `[${o.map(lit).join('')}]`);
  };

  /** Parses `(?flags)` / `(?flags:` letters at `j` (after `(?`); returns the new flags and end. */
  const parseFlags = (j: number): { f: Flags; end: number; scoped: boolean } | null => {
    const f = { ...flags };
    let neg = false;
    let k = j;
    for (; k < n; k++) {
      const ch = pattern[k];
      if (ch === ')' || ch === ':') break;
      if (ch === '-' && !neg) neg = true;
      else if (ch === 'i') f.i = !neg;
      else if (ch === 's') f.s = !neg;
      else if (ch === 'U') f.U = !neg;
      else if (ch === 'm') {
        // `^` and `$` at line boundaries: a record's text has no newline, so nothing changes.
      } else return null;
    }
    if (k >= n || k === j) return null;
    return { f, end: k, scoped: pattern[k] === ':' };
  };

  /** A character escape at `j` (just after the backslash) in or out of a class: its code unit. */
  const charEscape = (j: number): { c: number; end: number } | null => {
    const ch = pattern[j];
    const simple: Record<string, number> = { a: 7, f: 12, t: 9, n: 10, r: 13, v: 11 };
    if (ch in simple) return { c: simple[ch], end: j + 1 };
    if (ch === '0' || (ch >= '1' && ch <= '7' && /[0-7]/.test(pattern[j + 1] ?? ''))) {
      // Go: \0 and \1…\7 followed by an octal digit are octal, up to three digits (\123 is S);
      // a lone \1…\9 is a backreference in Perl, refused (as Go refuses it).
      const m = /^[0-7]{1,3}/.exec(pattern.slice(j, j + 3)) as RegExpExecArray;
      return { c: Number.parseInt(m[0], 8), end: j + m[0].length };
    }
    if (ch === 'x') {
      if (pattern[j + 1] === '{') {
        const close = pattern.indexOf('}', j + 2);
        const hex = close < 0 ? '' : pattern.slice(j + 2, close);
        if (!/^[0-9a-fA-F]{1,6}$/.test(hex)) refuse(`invalid escape \\x${pattern.slice(j + 1, j + 8)}`);
        const c = Number.parseInt(hex, 16);
        if (c > 0xffff) refuse(`\\x{${hex}}: characters beyond U+FFFF are not supported`);
        return { c, end: close + 1 };
      }
      const hex = pattern.slice(j + 1, j + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) refuse(`invalid escape \\x${hex}`);
      return { c: Number.parseInt(hex, 16), end: j + 3 };
    }
    if (ch !== undefined && !/[0-9A-Za-z]/.test(ch)) return { c: ch.charCodeAt(0), end: j + 1 };
    return null;
  };

  const unsupportedEscape = (j: number): never => {
    const ch = pattern[j];
    if (ch === undefined) return refuse('trailing backslash at end of pattern');
    if (ch === 'p' || ch === 'P') return refuse(`Unicode classes \\${ch}{…} are not supported`);
    if (ch === 'C') return refuse('\\C (any byte) is not supported');
    if (/[1-9]/.test(ch)) {
      const octal = ch < '8' ? `; an octal escape has two digits or more: \\0${ch}` : '';
      return refuse(`backreferences (\\${ch}) are not supported (regexes must run in linear time)${octal}`);
    }
    if (ch === 'k')
      return refuse('backreferences (\\k<name>) are not supported (regexes must run in linear time)');
    return refuse(`invalid escape \\${ch}`);
  };

  /** `[…]` at `i`: emits the class; returns the index after it. */
  const parseClass = (start: number): number => {
    let j = start + 1;
    let negate = false;
    if (pattern[j] === '^') {
      negate = true;
      j++;
    }
    // Items to fold under (?i) (ranges, POSIX and positive Perl classes), folded together at the
    // end; negated Perl classes (\D, \W, \S) come folded and complemented, as in Go.
    const items: Ranges = [];
    const fixed: Ranges = [];
    let first = true;
    // A class item that can end a range: a single code unit.
    const single = (k: number): { c: number; end: number } | null => {
      const ch = pattern[k];
      if (ch === '\\') {
        const e = charEscape(k + 1);
        return e;
      }
      if (ch === '[' && pattern[k + 1] === ':') return null;
      return { c: ch.charCodeAt(0), end: k + 1 };
    };
    for (;;) {
      if (j >= n) refuse('missing closing ] of a character class');
      const ch = pattern[j];
      if (ch === ']' && !first) {
        j++;
        break;
      }
      first = false;
      if (ch === '[' && pattern[j + 1] === ':') {
        const close = pattern.indexOf(':]', j + 2);
        const name = close < 0 ? '' : pattern.slice(j + 2, close);
        if (name.startsWith('^')) refuse(`negated POSIX classes ([:${name}:]) are not supported`);
        const set = POSIX[name];
        if (set === undefined) refuse(`invalid character class [:${name}:]`);
        items.push(...set);
        j = close + 2;
        continue;
      }
      if (ch === '\\') {
        const e = pattern[j + 1];
        if (e === 'd' || e === 's' || e === 'w') {
          items.push(...PERL[e]);
          j += 2;
          continue;
        }
        if (e === 'D' || e === 'S' || e === 'W') {
          fixed.push(...perlClass(e, flags.i));
          j += 2;
          continue;
        }
        if (e === 'Q') refuse('\\Q…\\E inside a character class is not supported');
      }
      const lo = single(j);
      if (lo === null) unsupportedEscape(j + 1);
      const loc = lo as { c: number; end: number };
      j = loc.end;
      let hi = loc.c;
      if (pattern[j] === '-' && j + 1 < n && pattern[j + 1] !== ']') {
        const h = single(j + 1);
        if (h === null) unsupportedEscape(j + 2);
        const hc = h as { c: number; end: number };
        if (hc.c < loc.c) refuse(`invalid character class range ${pattern.slice(start, hc.end)}`);
        hi = hc.c;
        j = hc.end;
      }
      items.push([loc.c, hi]);
    }
    let set = normalize([...(flags.i ? folded(normalize(items)) : items), ...fixed]);
    if (negate) set = complement(set);
    emitAtom(classOf(set));
    return j;
  };

  /** Go refuses a repetition of a repetition; `a{2}*` would mean `aa*` here (its expansion is no atom). */
  const nested = (prev: string, raw: string): never =>
    refuse(`invalid nested repetition operator ${prev}${raw} (repeat a group instead: (?:x${prev})${raw})`);

  /**
   * Applies a quantifier to the last atom: `*`, `+`, `?`, or `{` with its counts (max -1: none)
   * and raw text. Counted repetitions are expanded into copies (the engine refuses large counts).
   */
  const quantify = (op: string, min: number, max: number, lazyMark: boolean, raw = op) => {
    const lazy = lazyMark !== flags.U;
    if (atomStart < 0) {
      // Nothing to repeat: let the engine report it in its words.
      out += raw;
      return;
    }
    if (op !== '{') {
      repeats++;
      out += op + (lazy ? '?' : '');
    } else {
      if (min > MAX_COUNT || max > MAX_COUNT) refuse(`repetition count over ${MAX_COUNT} in ${raw}`);
      const atom = out.slice(atomStart);
      let text = atom.repeat(min);
      let copies = min;
      let ops = 0;
      if (max < 0) {
        text += `${atom}*${lazy ? '?' : ''}`;
        copies++;
        ops = 1;
      } else if (max > min) {
        // (?:x(?:x(?:x)?)?)? matches up to max-min more copies.
        const q = lazy ? '??' : '?';
        let tail = '';
        for (let k = 0; k < max - min; k++) tail = `(?:${atom}${tail})${q}`;
        text += tail;
        copies += max - min;
        ops = max - min;
      }
      if (copies * Math.max(1, atom.length) > MAX_COMPILED_LENGTH)
        refuse(`${raw} expands the pattern beyond ${MAX_COMPILED_LENGTH} characters`);
      out = out.slice(0, atomStart) + text;
      repeats += atomRepeats * (copies - 1) + ops;
    }
    atomStart = -1;
    atomRepeats = 0;
  };

  while (i < n) {
    const ch = pattern[i];
    const prevRepeat = lastRepeat;
    lastRepeat = '';
    if (ch === '\\') {
      const e = pattern[i + 1];
      if (e === 'Q') {
        const close = pattern.indexOf('\\E', i + 2);
        const text = close < 0 ? pattern.slice(i + 2) : pattern.slice(i + 2, close);
        for (let k = 0; k < text.length; k++) literal(text.charCodeAt(k));
        i = close < 0 ? n : close + 2;
        continue;
      }
      if (e === 'E') {
        i += 2; // a stray \E is ignored, as in Go
        continue;
      }
      if (e === 'd' || e === 'D' || e === 'w' || e === 'W' || e === 's' || e === 'S') {
        // JavaScript's \d, \D, \w and \W are Go's (ASCII) unless case folding adds to them
        // (under (?i) \w holds the Kelvin sign and ſ); its \s and \S are not.
        const native = e !== 's' && e !== 'S' && (!flags.i || e === 'd' || e === 'D');
        emitAtom(native ? `\\${e}` : classOf(perlClass(e, flags.i)));
        i += 2;
        continue;
      }
      if (e === 'b' || e === 'B') {
        out += `\\${e}`;
        atomStart = -1;
        i += 2;
        continue;
      }
      if (e === 'A' || e === 'z') {
        out += e === 'A' ? '^' : '$';
        atomStart = -1;
        i += 2;
        continue;
      }
      const c = charEscape(i + 1);
      if (c === null) unsupportedEscape(i + 1);
      const cc = c as { c: number; end: number };
      literal(cc.c);
      i = cc.end;
      continue;
    }
    if (ch === '[') {
      i = parseClass(i);
      continue;
    }
    if (ch === '(') {
      let j = i + 1;
      let groupFlags = flags;
      if (pattern[j] === '?') {
        const next = pattern[j + 1];
        if (next === ':') j += 2;
        else if (next === 'P' && pattern[j + 2] === '<') {
          const m = /^[A-Za-z0-9_]+>/.exec(pattern.slice(j + 3));
          if (m === null) refuse(`invalid named group ${pattern.slice(i, i + 12)}`);
          j += 3 + (m as RegExpExecArray)[0].length;
        } else if (next === 'P' && pattern[j + 2] === '=') {
          refuse('backreferences ((?P=name)) are not supported (regexes must run in linear time)');
        } else if (next === '=' || next === '!') {
          refuse(`lookahead (?${next}…) is not supported (regexes must run in linear time)`);
        } else if (next === '<' && (pattern[j + 2] === '=' || pattern[j + 2] === '!')) {
          refuse(`lookbehind (?<${pattern[j + 2]}…) is not supported (regexes must run in linear time)`);
        } else if (next === '<') {
          const m = /^[A-Za-z0-9_]+>/.exec(pattern.slice(j + 2));
          if (m === null) refuse(`invalid named group ${pattern.slice(i, i + 12)}`);
          j += 2 + (m as RegExpExecArray)[0].length;
        } else {
          const pf = parseFlags(j + 1);
          if (pf === null) refuse(`unsupported group syntax ${pattern.slice(i, i + 4)}…`);
          const f = pf as { f: Flags; end: number; scoped: boolean };
          if (!f.scoped) {
            // (?i) in the middle: applies to the rest of the enclosing group, as in Go.
            flags = f.f;
            i = f.end + 1;
            continue;
          }
          groupFlags = f.f;
          j = f.end + 1;
        }
      }
      // Every group is non-capturing: captures are never read, and they are what makes the
      // linear engine slow.
      stack.push({ flags, start: out.length, repeats });
      flags = groupFlags;
      out += '(?:';
      atomStart = -1;
      i = j;
      continue;
    }
    if (ch === ')') {
      const frame = stack.pop();
      out += ')';
      i++;
      if (frame === undefined) {
        atomStart = -1; // unbalanced: the engine reports it
        continue;
      }
      flags = frame.flags;
      atomStart = frame.start;
      atomRepeats = repeats - frame.repeats;
      continue;
    }
    if (ch === '*' || ch === '+' || ch === '?') {
      const lazy = pattern[i + 1] === '?';
      const raw = lazy ? `${ch}?` : ch;
      if (prevRepeat !== '') nested(prevRepeat, raw);
      lastRepeat = atomStart < 0 ? '' : raw; // nothing to repeat: the engine says so
      quantify(ch, 0, 0, lazy);
      i += raw.length;
      continue;
    }
    if (ch === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i, i + 16));
      if (m !== null) {
        const min = Number(m[1]);
        const max = m[2] === undefined ? min : m[3] === '' ? -1 : Number(m[3]);
        if (max >= 0 && max < min) refuse(`invalid repeat count ${m[0]}`);
        const lazy = pattern[i + m[0].length] === '?';
        const raw = lazy ? `${m[0]}?` : m[0];
        if (prevRepeat !== '') nested(prevRepeat, raw);
        lastRepeat = atomStart < 0 ? '' : raw;
        quantify('{', min, max, lazy, m[0]);
        i += raw.length;
        continue;
      }
      literal(0x7b); // Go takes a `{` that starts no repetition literally
      i++;
      continue;
    }
    if (ch === '|') {
      out += '|';
      atomStart = -1;
      i++;
      continue;
    }
    if (ch === '^' || ch === '$') {
      out += ch;
      atomStart = -1;
      i++;
      continue;
    }
    if (ch === '.') {
      // Go's `.` is anything but \n; JavaScript's also misses \r, U+2028 and U+2029.
      emitAtom(classOf(flags.s ? ANY : NOT_NEWLINE));
      i++;
      continue;
    }
    literal(pattern.charCodeAt(i));
    i++;
  }
  if (repeats > MAX_REPEATS)
    refuse(
      `pattern has ${repeats} repetition operators (*, +, ?, {n,m} counted after expansion), at most ${MAX_REPEATS} are allowed`,
    );
  if (out.length > MAX_COMPILED_LENGTH)
    refuse(`pattern expands to ${out.length} characters, at most ${MAX_COMPILED_LENGTH} are allowed`);
  return { source: out, repeats };
}
