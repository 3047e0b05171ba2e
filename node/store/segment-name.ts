// Store segment file names (reference §4.3): `<LOW>-<HIGH>.<state>`, LOW and HIGH canonical ULIDs
// bounding the records inside, so a time-range query selects files by name alone.
import { ALPHABET, ULID_LENGTH } from '../../shared/ulid.ts';

/** States a named segment can be in; `.active` files are named by a UUID instead. */
export type SegmentState = 'flushed' | 'reading' | 'trashed';
export const SEGMENT_STATES: readonly SegmentState[] = ['flushed', 'reading', 'trashed'];

export const ACTIVE_EXT = '.active';
/** Extension appended to files set aside (bad names, unparsable lines): kept for a human, never read. */
export const BAD_EXT = '.bad';
/**
 * Extension of a segment removed from the log while a query still reads it: renamed out of the
 * way so its segment name is free again; deleted once the last reader lets go (or at recovery).
 */
export const DOOMED_EXT = '.doomed';

export interface SegmentName {
  low: string;
  high: string;
  state: SegmentState;
}

const CANONICAL = new Uint8Array(128);
for (const c of ALPHABET) CANONICAL[c.charCodeAt(0)] = 1;

/** True for a canonical (upper-case, ≤ 128 bits) ULID string. */
export function isCanonicalUlid(s: string): boolean {
  if (s.length !== ULID_LENGTH || s.charCodeAt(0) > 0x37) return false;
  for (let i = 0; i < ULID_LENGTH; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || CANONICAL[c] === 0) return false;
  }
  return true;
}

export function segmentBase(low: string, high: string): string {
  return `${low}-${high}`;
}

export function segmentFileName(low: string, high: string, state: SegmentState): string {
  return `${low}-${high}.${state}`;
}

/**
 * Parses `LOW-HIGH.state`. Returns null for anything else (the caller moves such files aside).
 * Reversed bounds are swapped, as OK Log does; the file itself is still under its reversed name,
 * which differs from `segmentFileName(low, high, state)`: recovery renames it (recovery.ts).
 */
export function parseSegmentName(name: string): SegmentName | null {
  const dot = name.lastIndexOf('.');
  if (dot !== 2 * ULID_LENGTH + 1) return null;
  const state = name.slice(dot + 1) as SegmentState;
  if (!SEGMENT_STATES.includes(state)) return null;
  if (name.charCodeAt(ULID_LENGTH) !== 0x2d) return null; // '-'
  let low = name.slice(0, ULID_LENGTH);
  let high = name.slice(ULID_LENGTH + 1, dot);
  if (!isCanonicalUlid(low) || !isCanonicalUlid(high)) return null;
  if (low > high) [low, high] = [high, low];
  return { low, high, state };
}

/** `ulid` + 1 (as a 130-bit base32 number), or null when it would exceed the largest ULID. */
export function nextUlid(ulid: string): string | null {
  const chars = ulid.split('');
  for (let i = chars.length - 1; i >= 0; i--) {
    const v = ALPHABET.indexOf(chars[i]);
    if (v < 31) {
      chars[i] = ALPHABET[v + 1];
      const out = chars.join('');
      return out.charCodeAt(0) > 0x37 ? null : out;
    }
    chars[i] = '0';
  }
  return null;
}

/** `ulid` − 1, or null below zero. */
export function prevUlid(ulid: string): string | null {
  const chars = ulid.split('');
  for (let i = chars.length - 1; i >= 0; i--) {
    const v = ALPHABET.indexOf(chars[i]);
    if (v > 0) {
      chars[i] = ALPHABET[v - 1];
      return chars.join('');
    }
    chars[i] = 'Z';
  }
  return null;
}
