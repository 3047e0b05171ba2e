// ULIDs: 48-bit millisecond time + 80 bits of entropy, 26 Crockford base32 characters.
// The generator follows OK Log HEAD's "stream clock" (reference §2.2): entropy is a random
// 16-bit connection prefix plus a 64-bit counter seeded once, so producing a ULID costs no
// crypto call and ULIDs strictly increase within one generator even inside one millisecond.
import { InvalidUlidError } from './errors.ts';

export const ULID_LENGTH = 26;
export const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const ENC = Buffer.from(ALPHABET, 'latin1');
const MAX_TIME = 2 ** 48 - 1;

/** Decoding table: byte → 5-bit value, or 0xff for an invalid character. Lower case accepted. */
const DEC = new Uint8Array(256).fill(0xff);
for (let i = 0; i < ALPHABET.length; i++) {
  DEC[ALPHABET.charCodeAt(i)] = i;
  DEC[ALPHABET.toLowerCase().charCodeAt(i)] = i;
}
/** Canonical (upper-case only) table, used to validate stored records byte by byte. */
const CANON = new Uint8Array(256).fill(0);
for (let i = 0; i < ALPHABET.length; i++) CANON[ALPHABET.charCodeAt(i)] = 1;

/** Writes the 10-character time part of `ms` into `out` at `off`. */
export function encodeTime(ms: number, out: Buffer, off: number): void {
  if (!Number.isInteger(ms) || ms < 0 || ms > MAX_TIME) throw new RangeError(`ULID time out of range: ${ms}`);
  for (let i = 9; i >= 0; i--) {
    const mod = ms % 32;
    out[off + i] = ENC[mod];
    ms = (ms - mod) / 32;
  }
}

/** Writes 10 bytes of entropy `e` (starting at `eo`) as 16 characters into `out` at `off`. */
export function encodeEntropy(e: Uint8Array, eo: number, out: Buffer, off: number): void {
  // Same bit layout as oklog/ulid MarshalTextTo: 80 bits, 5 at a time, most significant first.
  const b0 = e[eo];
  const b1 = e[eo + 1];
  const b2 = e[eo + 2];
  const b3 = e[eo + 3];
  const b4 = e[eo + 4];
  const b5 = e[eo + 5];
  const b6 = e[eo + 6];
  const b7 = e[eo + 7];
  const b8 = e[eo + 8];
  const b9 = e[eo + 9];
  out[off] = ENC[(b0 & 248) >> 3];
  out[off + 1] = ENC[((b0 & 7) << 2) | ((b1 & 192) >> 6)];
  out[off + 2] = ENC[(b1 & 62) >> 1];
  out[off + 3] = ENC[((b1 & 1) << 4) | ((b2 & 240) >> 4)];
  out[off + 4] = ENC[((b2 & 15) << 1) | ((b3 & 128) >> 7)];
  out[off + 5] = ENC[(b3 & 124) >> 2];
  out[off + 6] = ENC[((b3 & 3) << 3) | ((b4 & 224) >> 5)];
  out[off + 7] = ENC[b4 & 31];
  out[off + 8] = ENC[(b5 & 248) >> 3];
  out[off + 9] = ENC[((b5 & 7) << 2) | ((b6 & 192) >> 6)];
  out[off + 10] = ENC[(b6 & 62) >> 1];
  out[off + 11] = ENC[((b6 & 1) << 4) | ((b7 & 240) >> 4)];
  out[off + 12] = ENC[((b7 & 15) << 1) | ((b8 & 128) >> 7)];
  out[off + 13] = ENC[(b8 & 124) >> 2];
  out[off + 14] = ENC[((b8 & 3) << 3) | ((b9 & 224) >> 5)];
  out[off + 15] = ENC[b9 & 31];
}

/** A source of random 32-bit unsigned integers; injectable for tests. */
export type RandomSource = () => number;
export const mathRandom32: RandomSource = () => Math.floor(Math.random() * 0x1_0000_0000);

/**
 * Per-connection ULID generator. Strictly increasing: the counter advances on every call and the
 * time part never goes backwards, even if the wall clock does.
 */
export class UlidGenerator {
  private readonly entropy = new Uint8Array(10);
  private lastMs = -1;
  private readonly timeText = Buffer.alloc(10);
  /** Where writeNextInPlace last wrote in full (see there). */
  private inPlace: Buffer | null = null;
  private inPlaceOffset = 0;
  private readonly now: () => number;

  constructor(options: { now?: () => number; random?: RandomSource } = {}) {
    this.now = options.now ?? Date.now;
    const random = options.random ?? mathRandom32;
    const prefix = random() & 0xffff;
    this.entropy[0] = prefix >> 8;
    this.entropy[1] = prefix & 0xff;
    // Counter = (random 31-bit value) << 32: low 32 bits start at 0, top bit 0 (room to count).
    const hi = random() & 0x7fffffff;
    this.entropy[2] = hi >>> 24;
    this.entropy[3] = (hi >>> 16) & 0xff;
    this.entropy[4] = (hi >>> 8) & 0xff;
    this.entropy[5] = hi & 0xff;
  }

  /** The generator's clock (ms), for callers that stamp a run of records with one reading. */
  clock(): number {
    return this.now();
  }

  /** Writes the next ULID (26 ASCII bytes) into `out` at `off`. */
  writeNext(out: Buffer, off: number): void {
    this.writeNextAt(out, off, this.now());
  }

  /** writeNext with the time read by the caller (`clock()`): still strictly increasing. */
  writeNextAt(out: Buffer, off: number, now: number): void {
    this.advance(now);
    this.writeCurrent(out, off);
  }

  /**
   * writeNextAt for a place that holds the previous ULID of this generator, as a template the
   * caller copies each record's prefix from: only the characters that changed are written (two,
   * unless the time moved or the counter carried out of its last byte), a third of the cost of
   * writing all 26 at a million records a second. The place is remembered (buffer and offset);
   * any other place is written in full, and so is this one once another was written.
   */
  writeNextInPlace(out: Buffer, off: number, now: number): void {
    const msBefore = this.lastMs;
    const lastByteOnly = this.advance(now);
    if (lastByteOnly && this.lastMs === msBefore && out === this.inPlace && off === this.inPlaceOffset) {
      const b8 = this.entropy[8];
      const b9 = this.entropy[9];
      out[off + 24] = ENC[((b8 & 3) << 3) | ((b9 & 224) >> 5)];
      out[off + 25] = ENC[b9 & 31];
      return;
    }
    this.writeCurrent(out, off);
    this.inPlace = out;
    this.inPlaceOffset = off;
  }

  /** The next ULID as a string. */
  next(): string {
    const b = Buffer.allocUnsafe(ULID_LENGTH);
    this.writeNext(b, 0);
    return b.toString('latin1');
  }

  /**
   * Steps to the next ULID: the counter advances, the time never goes backwards. Returns true
   * when only the entropy's last byte changed.
   */
  private advance(now: number): boolean {
    let ms = now;
    if (ms < this.lastMs) ms = this.lastMs;
    const e = this.entropy;
    let lastByteOnly = true;
    let wrapped = true;
    for (let i = 9; i >= 0; i--) {
      if (e[i] !== 0xff) {
        e[i]++;
        wrapped = false;
        break;
      }
      e[i] = 0;
      lastByteOnly = false;
    }
    if (wrapped) ms = this.lastMs + 1; // all 80 bits wrapped: move time on to stay increasing
    if (ms !== this.lastMs) {
      this.lastMs = ms;
      encodeTime(ms, this.timeText, 0);
    }
    return lastByteOnly;
  }

  /** Writes the current ULID (26 bytes) at `out[off]`. */
  private writeCurrent(out: Buffer, off: number): void {
    const t = this.timeText;
    for (let i = 0; i < 10; i++) out[off + i] = t[i]; // per record: a loop beats a Buffer#copy call
    encodeEntropy(this.entropy, 0, out, off + 10);
  }
}

/** Strict parse: 26 Crockford characters (either case), first ≤ '7'. Returns the canonical form. */
export function parseUlid(value: string): string {
  if (value.length !== ULID_LENGTH) throw new InvalidUlidError(value);
  for (let i = 0; i < ULID_LENGTH; i++) {
    const c = value.charCodeAt(i);
    if (c > 255 || DEC[c] === 0xff) throw new InvalidUlidError(value);
  }
  if (DEC[value.charCodeAt(0)] > 7) throw new InvalidUlidError(value); // > 128 bits
  return value.toUpperCase();
}

export function isValidUlid(value: string): boolean {
  try {
    parseUlid(value);
    return true;
  } catch {
    return false;
  }
}

/** True if `buf[off..off+26)` is a canonical (upper-case) ULID. Used on stored records. */
export function isCanonicalUlidAt(buf: Uint8Array, off: number): boolean {
  if (buf.length < off + ULID_LENGTH) return false;
  if (buf[off] > 0x37) return false; // first char must be 0-7
  for (let i = 0; i < ULID_LENGTH; i++) if (CANON[buf[off + i]] === 0) return false;
  return true;
}

/** Milliseconds encoded in a ULID's first 10 characters (string or bytes at `off`). */
export function ulidTime(ulid: string | Uint8Array, off = 0): number {
  let ms = 0;
  for (let i = 0; i < 10; i++) {
    const c = typeof ulid === 'string' ? ulid.charCodeAt(off + i) : ulid[off + i];
    const v = DEC[c];
    if (v === 0xff || v === undefined) throw new InvalidUlidError(String(ulid).slice(off, off + ULID_LENGTH));
    ms = ms * 32 + v;
  }
  return ms;
}

/** The smallest ULID of millisecond `ms` (zero entropy). */
export function minUlidAt(ms: number): string {
  const b = Buffer.alloc(ULID_LENGTH, 0x30);
  encodeTime(Math.max(0, Math.min(MAX_TIME, Math.floor(ms))), b, 0);
  return b.toString('latin1');
}

/** The largest ULID of millisecond `ms` (all-ones entropy), so a `to` bound covers its whole ms. */
export function maxUlidAt(ms: number): string {
  const b = Buffer.alloc(ULID_LENGTH, 0x5a); // 'Z'
  encodeTime(Math.max(0, Math.min(MAX_TIME, Math.floor(ms))), b, 0);
  return b.toString('latin1');
}

export const ZERO_ULID = '0'.repeat(ULID_LENGTH);
export const MAX_ULID = '7' + 'Z'.repeat(ULID_LENGTH - 1);
