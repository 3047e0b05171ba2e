// Go RE2 syntax (what OK Log users write) translated for V8's linear-time engine (the `l` flag),
// plus the limits that keep every pattern cheap.
//
// Why translate rather than pass the pattern through:
// - Capturing groups are never used (a filter only asks "does it match"), but the linear engine
//   tracks them for every thread of its NFA: `(a*)*` repeated 300 times cost ~80 ms per 52-byte
//   line, the same pattern without captures under 1 ms. Every group becomes `(?:…)`.
// - The linear engine has no `i` flag, and Go writes flags inline: `(?i)error`. Case-insensitive
//   parts are rewritten as classes of every case variant (`[eE][rR]…`), which the engine runs as
//   cheaply as literals. `(?s)` and `(?m)` change nothing here: a record's text never contains a
//   newline, so `.`, `^` and `$` mean the same with or without them.
// - Some Go constructs mean something else in JavaScript (`\z`, `\Q…\E`, `[]a]`, `[[:alpha:]]`,
//   `\s`, `\x{…}`) or are silently taken literally (`\pL`): they are translated or refused.
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

let orbits: Map<number, number[]> | null = null;

/** Code units equal to `c` under simple case folding (including `c`), e.g. k, K and U+212A. */
function caseOrbit(c: number): number[] {
  if (orbits === null) {
    // Built once, on the first case-insensitive pattern: 64 Ki code units, a few milliseconds.
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
    orbits = new Map();
    for (const list of byKey.values()) if (list.length > 1) for (const u of list) orbits.set(u, list);
  }
  return orbits.get(c) ?? [c];
}

const SPECIAL = new Set('\\^$.|?*+()[]{}/-');

/** A code unit as pattern text that matches exactly it, outside or inside a class. */
function lit(c: number): string {
  const ch = String.fromCharCode(c);
  if (SPECIAL.has(ch)) return `\\${ch}`;
  if (c < 0x20 || c > 0x7e) return `\\u${c.toString(16).padStart(4, '0')}`;
  return ch;
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

/** Go's \s is ASCII whitespace only (JavaScript's includes Unicode spaces and \v). */
const GO_SPACE = '\\t\\n\\f\\r ';

interface Flags {
  /** Case-insensitive. */
  i: boolean;
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
  let flags: Flags = { i: false, U: false };
  const stack: Frame[] = [];
  // The last atom emitted (what a quantifier applies to): its start in `out` and the repeats
  // inside it; -1 when there is none (start, after `(`, `|`, an anchor or a quantifier).
  let atomStart = -1;
  let atomRepeats = 0;

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
      else if (ch === 'U') f.U = !neg;
      else if (ch === 's' || ch === 'm') {
        // No newline in a record's text: `.`, `^` and `$` behave the same either way.
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
    if (ch === '0') {
      // Go: octal, up to three digits.
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
    if (/[1-9]/.test(ch))
      return refuse(`backreferences (\\${ch}) are not supported (regexes must run in linear time)`);
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
    let body = '';
    const ranges: [number, number][] = [];
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
        for (const [lo, hi] of set) {
          ranges.push([lo, hi]);
          body += lo === hi ? lit(lo) : `${lit(lo)}-${lit(hi)}`;
        }
        j = close + 2;
        continue;
      }
      if (ch === '\\') {
        const e = pattern[j + 1];
        if (e === 'd' || e === 'D' || e === 'w' || e === 'W' || e === 'S') {
          body += `\\${e}`;
          j += 2;
          continue;
        }
        if (e === 's') {
          body += GO_SPACE;
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
      ranges.push([loc.c, hi]);
      body += loc.c === hi ? lit(loc.c) : `${lit(loc.c)}-${lit(hi)}`;
    }
    if (flags.i) {
      // Add every case variant the class does not hold yet (for [^…], of what it excludes).
      const has = (c: number) => ranges.some(([lo, hi]) => c >= lo && c <= hi);
      const extra = new Set<number>();
      for (const [lo, hi] of ranges)
        for (let c = lo; c <= hi; c++) for (const v of caseOrbit(c)) if (!has(v)) extra.add(v);
      const sorted = [...extra].sort((a, b) => a - b);
      for (let k = 0; k < sorted.length; ) {
        let e = k;
        while (e + 1 < sorted.length && sorted[e + 1] === sorted[e] + 1) e++;
        body += e === k ? lit(sorted[k]) : `${lit(sorted[k])}-${lit(sorted[e])}`;
        k = e + 1;
      }
    }
    emitAtom(`[${negate ? '^' : ''}${body}]`);
    return j;
  };

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

  // Leading flags, as Go users write them: (?i), (?s), (?is)…
  while (pattern.startsWith('(?', i)) {
    const pf = parseFlags(i + 2);
    if (pf === null || pf.scoped) break;
    flags = pf.f;
    i = pf.end + 1;
  }

  while (i < n) {
    const ch = pattern[i];
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
      if (e === 'd' || e === 'D' || e === 'w' || e === 'W') {
        emitAtom(`\\${e}`);
        i += 2;
        continue;
      }
      if (e === 's' || e === 'S') {
        emitAtom(e === 's' ? `[${GO_SPACE}]` : `[^${GO_SPACE}]`);
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
      quantify(ch, 0, 0, lazy);
      i += lazy ? 2 : 1;
      continue;
    }
    if (ch === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i, i + 16));
      if (m !== null) {
        const min = Number(m[1]);
        const max = m[2] === undefined ? min : m[3] === '' ? -1 : Number(m[3]);
        if (max >= 0 && max < min) refuse(`invalid repeat count ${m[0]}`);
        const lazy = pattern[i + m[0].length] === '?';
        quantify('{', min, max, lazy, m[0]);
        i += m[0].length + (lazy ? 1 : 0);
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
      emitAtom('.');
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
