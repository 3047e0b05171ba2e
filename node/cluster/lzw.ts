// LZW exactly as Go's compress/lzw with LSB bit order and 8-bit literals, which memberlist uses
// for compressed packets and streams: clear code 256, end code 257, codes 9 to 12 bits wide, the
// writer emits a clear code first and clears the table when it runs out of codes. The decoder is
// a port of Go's reader (including its "early change" of the code width) with an output cap, so a
// small hostile input cannot expand without bound.
import { GossipDecodeError } from './errors.ts';

const LIT_WIDTH = 8;
const CLEAR = 1 << LIT_WIDTH; // 256
const EOF = CLEAR + 1; // 257
const MAX_WIDTH = 12;
const MAX_CODE = (1 << MAX_WIDTH) - 1; // 4095
const TABLE_SIZE = 4 * (1 << 12);
const TABLE_MASK = TABLE_SIZE - 1;
const INVALID_ENTRY = 0;

/** Compresses `input` into the byte stream Go's lzw.NewReader(r, lzw.LSB, 8) reads. */
export function lzwCompress(input: Buffer): Buffer {
  let out = Buffer.allocUnsafe(Math.max(64, input.length));
  let o = 0;
  const emit = (b: number) => {
    if (o >= out.length) {
      const next = Buffer.allocUnsafe(out.length * 2);
      out.copy(next, 0, 0, o);
      out = next;
    }
    out[o++] = b;
  };
  let bits = 0;
  let nBits = 0;
  let width = LIT_WIDTH + 1;
  let hi = EOF;
  let overflow = 1 << (LIT_WIDTH + 1);
  const table = new Uint32Array(TABLE_SIZE);

  const write = (c: number) => {
    bits |= c << nBits;
    nBits += width;
    while (nBits >= 8) {
      emit(bits & 0xff);
      bits >>>= 8;
      nBits -= 8;
    }
  };
  // Returns false when the table was reset (Go's errOutOfCodes).
  const incHi = (): boolean => {
    hi++;
    if (hi === overflow) {
      width++;
      overflow <<= 1;
    }
    if (hi === MAX_CODE) {
      write(CLEAR);
      width = LIT_WIDTH + 1;
      hi = CLEAR + 1;
      overflow = CLEAR << 1;
      table.fill(INVALID_ENTRY);
      return false;
    }
    return true;
  };

  if (input.length === 0) {
    write(CLEAR);
  } else {
    write(CLEAR);
    let code = input[0];
    outer: for (let i = 1; i < input.length; i++) {
      const literal = input[i];
      const key = (code << 8) | literal;
      let hash = ((key >>> 12) ^ key) & TABLE_MASK;
      for (let h = hash, t = table[hash]; t !== INVALID_ENTRY; ) {
        if (key === t >>> 12) {
          code = t & MAX_CODE;
          continue outer;
        }
        h = (h + 1) & TABLE_MASK;
        t = table[h];
      }
      write(code);
      code = literal;
      if (!incHi()) continue;
      for (;;) {
        if (table[hash] === INVALID_ENTRY) {
          table[hash] = ((key << 12) | hi) >>> 0;
          break;
        }
        hash = (hash + 1) & TABLE_MASK;
      }
    }
    write(code);
    incHi();
  }
  write(EOF);
  if (nBits > 0) emit(bits & 0xff);
  return out.subarray(0, o);
}

/**
 * Decompresses Go LZW (LSB, 8-bit literals). Throws GossipDecodeError: `compression` for a
 * malformed or unterminated stream, `too_large` once the output would exceed `maxOutput` bytes.
 */
export function lzwDecompress(input: Buffer, maxOutput: number): Buffer {
  let out = Buffer.allocUnsafe(Math.min(Math.max(input.length * 3, 256), maxOutput));
  let o = 0;
  const put = (b: number) => {
    if (o >= out.length) {
      if (o >= maxOutput) throw new GossipDecodeError('too_large', 'decompressed payload too large');
      const next = Buffer.allocUnsafe(Math.min(out.length * 2, maxOutput));
      out.copy(next, 0, 0, o);
      out = next;
    }
    out[o++] = b;
  };
  const suffix = new Uint8Array(1 << MAX_WIDTH);
  const prefix = new Uint16Array(1 << MAX_WIDTH);
  const stack = new Uint8Array(1 << MAX_WIDTH);
  const INVALID = 0xffff;
  let bits = 0;
  let nBits = 0;
  let pos = 0;
  let width = LIT_WIDTH + 1;
  let hi = EOF;
  let overflow = 1 << width;
  let last = INVALID;

  for (;;) {
    while (nBits < width) {
      if (pos >= input.length) throw new GossipDecodeError('compression', 'lzw: unexpected end of data');
      bits |= input[pos++] << nBits;
      nBits += 8;
    }
    const code = bits & ((1 << width) - 1);
    bits >>>= width;
    nBits -= width;

    if (code < CLEAR) {
      put(code);
      if (last !== INVALID) {
        suffix[hi] = code;
        prefix[hi] = last;
      }
    } else if (code === CLEAR) {
      width = LIT_WIDTH + 1;
      hi = EOF;
      overflow = 1 << width;
      last = INVALID;
      continue;
    } else if (code === EOF) {
      break;
    } else if (code <= hi) {
      if (code === hi && last === INVALID) throw new GossipDecodeError('compression', 'lzw: invalid code');
      let n = 0;
      let c = code;
      if (code === hi) {
        // KwKwK: the string of `last` followed by its own first byte.
        c = last;
        let steps = 0;
        while (c >= CLEAR) {
          c = prefix[c];
          if (++steps > MAX_CODE) throw new GossipDecodeError('compression', 'lzw: code loop');
        }
        stack[n++] = c;
        c = last;
      }
      while (c >= CLEAR) {
        if (n >= stack.length) throw new GossipDecodeError('compression', 'lzw: code loop');
        stack[n++] = suffix[c];
        c = prefix[c];
      }
      if (n >= stack.length) throw new GossipDecodeError('compression', 'lzw: code loop');
      stack[n++] = c;
      for (let i = n - 1; i >= 0; i--) put(stack[i]);
      if (last !== INVALID) {
        suffix[hi] = c;
        prefix[hi] = last;
      }
    } else {
      throw new GossipDecodeError('compression', 'lzw: invalid code');
    }
    last = code;
    hi++;
    if (hi >= overflow) {
      if (width === MAX_WIDTH) {
        last = INVALID;
        hi--;
      } else {
        width++;
        overflow = 1 << width;
      }
    }
  }
  return out.subarray(0, o);
}
