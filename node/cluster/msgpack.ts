// The subset of msgpack that hashicorp/memberlist speaks (go-msgpack, old spec), hand-written so
// that every length is checked against the input and nothing a peer sends can allocate more than
// it sent. Strings and byte slices are both "raw" on the wire: the decoder returns every str/bin as
// a Buffer (a view into the input, never a copy) and the caller decides, per field, whether it is
// text or bytes. The encoder writes raw values as fixstr/str16/str32 exactly as Go does, so old Go
// decoders that predate str8/bin read them.
import { GossipDecodeError, TruncatedError } from './errors.ts';

export type MsgValue = null | boolean | number | Buffer | MsgValue[] | Map<string, MsgValue>;

export interface DecodeLimits {
  /** Containers nested deeper than this are rejected (a memberlist struct is depth 1). */
  maxDepth: number;
  /** Entries per map or array. */
  maxEntries: number;
}

/** Limits for one memberlist message: a flat map of scalar and raw fields. */
export const STRUCT_LIMITS: DecodeLimits = { maxDepth: 1, maxEntries: 64 };

export interface Decoded {
  value: MsgValue;
  /** Offset just past the value. */
  end: number;
}

function need(buf: Buffer, off: number, n: number): void {
  if (off + n > buf.length) throw new TruncatedError(off + n);
}

/** Decodes one value at `offset`. Throws TruncatedError when the input ends early. */
export function decodeValue(buf: Buffer, offset: number, limits: DecodeLimits): Decoded {
  const state = { off: offset };
  const value = readAny(buf, state, limits, 0);
  return { value, end: state.off };
}

function readRaw(buf: Buffer, s: { off: number }, len: number): Buffer {
  need(buf, s.off, len);
  const v = buf.subarray(s.off, s.off + len);
  s.off += len;
  return v;
}

function readAny(buf: Buffer, s: { off: number }, limits: DecodeLimits, depth: number): MsgValue {
  need(buf, s.off, 1);
  const b = buf[s.off++];
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if (b >= 0xa0 && b <= 0xbf) return readRaw(buf, s, b & 0x1f);
  if (b >= 0x80 && b <= 0x8f) return readMap(buf, s, limits, depth, b & 0x0f);
  if (b >= 0x90 && b <= 0x9f) return readArray(buf, s, limits, depth, b & 0x0f);
  let v: number;
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4: // bin8
    case 0xd9: // str8
      need(buf, s.off, 1);
      v = buf[s.off];
      s.off += 1;
      return readRaw(buf, s, v);
    case 0xc5: // bin16
    case 0xda: // str16
      need(buf, s.off, 2);
      v = buf.readUInt16BE(s.off);
      s.off += 2;
      return readRaw(buf, s, v);
    case 0xc6: // bin32
    case 0xdb: // str32
      need(buf, s.off, 4);
      v = buf.readUInt32BE(s.off);
      s.off += 4;
      return readRaw(buf, s, v);
    case 0xca:
      need(buf, s.off, 4);
      v = buf.readFloatBE(s.off);
      s.off += 4;
      return v;
    case 0xcb:
      need(buf, s.off, 8);
      v = buf.readDoubleBE(s.off);
      s.off += 8;
      return v;
    case 0xcc:
      need(buf, s.off, 1);
      return buf[s.off++];
    case 0xcd:
      need(buf, s.off, 2);
      v = buf.readUInt16BE(s.off);
      s.off += 2;
      return v;
    case 0xce:
      need(buf, s.off, 4);
      v = buf.readUInt32BE(s.off);
      s.off += 4;
      return v;
    case 0xcf:
      need(buf, s.off, 8);
      v = Number(buf.readBigUInt64BE(s.off));
      s.off += 8;
      return v;
    case 0xd0:
      need(buf, s.off, 1);
      return buf.readInt8(s.off++);
    case 0xd1:
      need(buf, s.off, 2);
      v = buf.readInt16BE(s.off);
      s.off += 2;
      return v;
    case 0xd2:
      need(buf, s.off, 4);
      v = buf.readInt32BE(s.off);
      s.off += 4;
      return v;
    case 0xd3:
      need(buf, s.off, 8);
      v = Number(buf.readBigInt64BE(s.off));
      s.off += 8;
      return v;
    case 0xdc:
      need(buf, s.off, 2);
      v = buf.readUInt16BE(s.off);
      s.off += 2;
      return readArray(buf, s, limits, depth, v);
    case 0xdd:
      need(buf, s.off, 4);
      v = buf.readUInt32BE(s.off);
      s.off += 4;
      return readArray(buf, s, limits, depth, v);
    case 0xde:
      need(buf, s.off, 2);
      v = buf.readUInt16BE(s.off);
      s.off += 2;
      return readMap(buf, s, limits, depth, v);
    case 0xdf:
      need(buf, s.off, 4);
      v = buf.readUInt32BE(s.off);
      s.off += 4;
      return readMap(buf, s, limits, depth, v);
    default:
      // 0xc1 (never used) and the ext family, which memberlist never sends.
      throw new GossipDecodeError('malformed', `unsupported msgpack type 0x${b.toString(16)}`);
  }
}

function checkContainer(limits: DecodeLimits, depth: number, count: number): void {
  if (depth + 1 > limits.maxDepth) throw new GossipDecodeError('malformed', 'msgpack nesting too deep');
  if (count > limits.maxEntries)
    throw new GossipDecodeError('malformed', `msgpack container has ${count} entries`);
}

function readArray(
  buf: Buffer,
  s: { off: number },
  limits: DecodeLimits,
  depth: number,
  count: number,
): MsgValue[] {
  checkContainer(limits, depth, count);
  const out: MsgValue[] = [];
  for (let i = 0; i < count; i++) out.push(readAny(buf, s, limits, depth + 1));
  return out;
}

function readMap(
  buf: Buffer,
  s: { off: number },
  limits: DecodeLimits,
  depth: number,
  count: number,
): Map<string, MsgValue> {
  checkContainer(limits, depth, count);
  const out = new Map<string, MsgValue>();
  for (let i = 0; i < count; i++) {
    const k = readAny(buf, s, limits, depth + 1);
    let key: string;
    if (Buffer.isBuffer(k)) key = k.toString('utf8');
    else if (typeof k === 'number') key = String(k);
    else throw new GossipDecodeError('malformed', 'msgpack map key is not a string');
    out.set(key, readAny(buf, s, limits, depth + 1));
  }
  return out;
}

/** Values the encoder accepts: strings and Buffers are both written as raw. */
export type EncValue = null | boolean | number | string | Buffer;

/** A growable output buffer with Go-compatible msgpack writers. */
export class MsgWriter {
  private buf: Buffer;
  private len = 0;

  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  byte(b: number): this {
    this.ensure(1);
    this.buf[this.len++] = b;
    return this;
  }

  bytes(b: Buffer): this {
    this.ensure(b.length);
    b.copy(this.buf, this.len);
    this.len += b.length;
    return this;
  }

  nil(): this {
    return this.byte(0xc0);
  }

  bool(v: boolean): this {
    return this.byte(v ? 0xc3 : 0xc2);
  }

  uint(v: number): this {
    this.ensure(9);
    if (v <= 0x7f) this.buf[this.len++] = v;
    else if (v <= 0xff) {
      this.buf[this.len++] = 0xcc;
      this.buf[this.len++] = v;
    } else if (v <= 0xffff) {
      this.buf[this.len++] = 0xcd;
      this.buf.writeUInt16BE(v, this.len);
      this.len += 2;
    } else if (v <= 0xffffffff) {
      this.buf[this.len++] = 0xce;
      this.buf.writeUInt32BE(v, this.len);
      this.len += 4;
    } else {
      this.buf[this.len++] = 0xcf;
      this.buf.writeBigUInt64BE(BigInt(v), this.len);
      this.len += 8;
    }
    return this;
  }

  int(v: number): this {
    if (v >= 0) return this.uint(v);
    this.ensure(9);
    if (v >= -32) this.buf[this.len++] = v & 0xff;
    else if (v >= -128) {
      this.buf[this.len++] = 0xd0;
      this.buf.writeInt8(v, this.len);
      this.len += 1;
    } else if (v >= -32768) {
      this.buf[this.len++] = 0xd1;
      this.buf.writeInt16BE(v, this.len);
      this.len += 2;
    } else if (v >= -2147483648) {
      this.buf[this.len++] = 0xd2;
      this.buf.writeInt32BE(v, this.len);
      this.len += 4;
    } else {
      this.buf[this.len++] = 0xd3;
      this.buf.writeBigInt64BE(BigInt(v), this.len);
      this.len += 8;
    }
    return this;
  }

  float64(v: number): this {
    this.ensure(9);
    this.buf[this.len++] = 0xcb;
    this.buf.writeDoubleBE(v, this.len);
    this.len += 8;
    return this;
  }

  /** Old-spec raw (fixstr / str16 / str32), as go-msgpack writes both string and []byte. */
  raw(v: Buffer | string): this {
    const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
    const n = b.length;
    this.ensure(5 + n);
    if (n <= 31) this.buf[this.len++] = 0xa0 | n;
    else if (n <= 0xffff) {
      this.buf[this.len++] = 0xda;
      this.buf.writeUInt16BE(n, this.len);
      this.len += 2;
    } else {
      this.buf[this.len++] = 0xdb;
      this.buf.writeUInt32BE(n, this.len);
      this.len += 4;
    }
    b.copy(this.buf, this.len);
    this.len += n;
    return this;
  }

  mapHeader(n: number): this {
    this.ensure(5);
    if (n <= 15) this.buf[this.len++] = 0x80 | n;
    else if (n <= 0xffff) {
      this.buf[this.len++] = 0xde;
      this.buf.writeUInt16BE(n, this.len);
      this.len += 2;
    } else {
      this.buf[this.len++] = 0xdf;
      this.buf.writeUInt32BE(n, this.len);
      this.len += 4;
    }
    return this;
  }

  arrayHeader(n: number): this {
    this.ensure(5);
    if (n <= 15) this.buf[this.len++] = 0x90 | n;
    else if (n <= 0xffff) {
      this.buf[this.len++] = 0xdc;
      this.buf.writeUInt16BE(n, this.len);
      this.len += 2;
    } else {
      this.buf[this.len++] = 0xdd;
      this.buf.writeUInt32BE(n, this.len);
      this.len += 4;
    }
    return this;
  }

  value(v: EncValue): this {
    if (v === null) return this.nil();
    if (typeof v === 'boolean') return this.bool(v);
    if (typeof v === 'number') return Number.isInteger(v) ? this.int(v) : this.float64(v);
    return this.raw(v);
  }

  /** A Go struct: a map keyed by field names, sorted by name as go-msgpack writes them. */
  struct(fields: ReadonlyArray<readonly [string, EncValue]>): this {
    const sorted = [...fields].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    this.mapHeader(sorted.length);
    for (const [k, v] of sorted) {
      this.raw(k);
      this.value(v);
    }
    return this;
  }

  get length(): number {
    return this.len;
  }

  /** The bytes written so far (a copy-free view; do not write afterwards). */
  finish(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}
