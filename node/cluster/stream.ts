// memberlist's TCP streams: an optional label, a type byte, then msgpack values back to back with
// no length prefix. Compressed streams are `[9]{Algo, Buf}`, encrypted ones `[10][u32 len][payload]`.
// The reader never trusts a peer: every read is capped (total bytes, bytes per value, nesting) and
// the caller puts a deadline on the connection. Inbound streams also draw on one node-wide byte
// budget (ByteBudget) for what they hold: bytes received, decrypted and decompressed. Per stream
// that is up to ~62 MiB and up to 256 streams may be open, so without it a few peers could make
// the node hold gigabytes.
import { decryptPayload, encryptPayload } from './crypto.ts';
import { GossipDecodeError, GossipError, TruncatedError } from './errors.ts';
import { lzwDecompress } from './lzw.ts';
import { type DecodeLimits, decodeValue, type MsgValue, STRUCT_LIMITS } from './msgpack.ts';
import { compressMessage, type PacketSecurity } from './packet.ts';
import type { StreamConn } from './transport.ts';
import { addLabel, asStruct, decodeCompress, MsgType } from './wire.ts';

/** memberlist's maxPushStateBytes: the most state a peer may send us. */
export const MAX_STREAM_STATE_BYTES = 20 * 1024 * 1024;
/** Total bytes read from one stream (state plus framing). */
export const MAX_STREAM_BYTES = MAX_STREAM_STATE_BYTES + 1024 * 1024;
/** One struct value on a stream (a header or a node state). */
const MAX_STRUCT_BYTES = 64 * 1024;

/** Bytes held by every inbound stream of a node together, against a limit. */
export class ByteBudget {
  private used = 0;
  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  get available(): number {
    return Math.max(0, this.limit - this.used);
  }

  tryTake(n: number): boolean {
    if (this.used + n > this.limit) return false;
    this.used += n;
    return true;
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

/** One stream's share of a ByteBudget: taken as the stream buffers, all given back on release. */
export class BudgetLease {
  private held = 0;
  private released = false;
  constructor(private readonly budget: ByteBudget | null) {}

  /** Room left for this stream (unlimited without a budget). */
  get available(): number {
    return this.budget ? this.budget.available : Number.POSITIVE_INFINITY;
  }

  /** Takes `n` bytes or throws GossipDecodeError('budget'). */
  take(n: number, what: string): void {
    // Released: the stream's handler is done. Bytes a peer still sends must not be charged to a
    // lease nobody gives back; the throw makes the reader close the connection instead.
    if (this.released) throw new GossipDecodeError('budget', `${what} after the stream was handled`);
    if (!this.budget) return;
    if (!this.budget.tryTake(n))
      throw new GossipDecodeError(
        'budget',
        `${what} of ${n} bytes exceeds the inbound stream memory budget (${this.budget.inUse} of ${this.budget.limit} bytes in use)`,
      );
    this.held += n;
  }

  /** Gives back what the stream held; final (a later take throws). */
  release(): void {
    this.released = true;
    this.budget?.give(this.held);
    this.held = 0;
  }
}

/** Sequential reads from a stream's bytes. */
export interface ValueSource {
  readByte(): Promise<number>;
  readExact(n: number): Promise<Buffer>;
  /** One msgpack value of at most `maxBytes` encoded bytes. */
  readValue(limits?: DecodeLimits, maxBytes?: number): Promise<MsgValue>;
}

/** A source over bytes already in memory (a decrypted or decompressed stream). */
export class BufferSource implements ValueSource {
  private off = 0;
  constructor(private readonly buf: Buffer) {}

  async readByte(): Promise<number> {
    if (this.off >= this.buf.length) throw new GossipDecodeError('truncated', 'stream ended');
    return this.buf[this.off++];
  }

  async readExact(n: number): Promise<Buffer> {
    if (this.off + n > this.buf.length) throw new GossipDecodeError('truncated', 'stream ended');
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }

  async readValue(limits = STRUCT_LIMITS, maxBytes = MAX_STRUCT_BYTES): Promise<MsgValue> {
    const slice = this.buf.subarray(this.off, this.off + maxBytes);
    try {
      const { value, end } = decodeValue(slice, 0, limits);
      this.off += end;
      return value;
    } catch (err) {
      if (err instanceof TruncatedError && this.off + err.needed <= this.buf.length)
        throw new GossipDecodeError('too_large', 'stream value too large');
      throw err;
    }
  }
}

/**
 * A source over a live connection. Chunks are kept in a list and joined only when a read needs
 * them; a value that is cut short is retried only once the bytes it needs have arrived, so
 * reading is linear in the stream's size.
 */
export class ConnSource implements ValueSource {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private total = 0;
  private done = false;
  private failure: Error | null = null;
  private waiter: { min: number; resolve: () => void; reject: (e: Error) => void } | null = null;

  constructor(
    conn: StreamConn,
    private readonly maxBytes = MAX_STREAM_BYTES,
    lease: BudgetLease | null = null,
  ) {
    conn.onData((chunk) => {
      if (this.done) return;
      this.total += chunk.length;
      if (this.total > this.maxBytes) {
        this.fail(new GossipDecodeError('too_large', 'stream exceeds the size limit'));
        conn.destroy();
        return;
      }
      try {
        lease?.take(chunk.length, 'stream data');
      } catch (err) {
        this.fail(err as Error);
        conn.destroy();
        return;
      }
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    conn.onClose((err) => {
      this.done = true;
      this.fail(
        err
          ? new GossipError(`connection failed: ${err.message}`)
          : new GossipDecodeError('truncated', 'stream ended early'),
      );
    });
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.done = true;
    const w = this.waiter;
    this.waiter = null;
    if (w && this.buffered < w.min) w.reject(this.failure);
    else w?.resolve();
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.buffered >= w.min) {
      this.waiter = null;
      w.resolve();
    }
  }

  private async waitFor(min: number): Promise<void> {
    if (this.buffered >= min) return;
    if (this.done) throw this.failure ?? new GossipDecodeError('truncated', 'stream ended early');
    await new Promise<void>((resolve, reject) => {
      this.waiter = { min, resolve, reject };
    });
  }

  /** The buffered bytes as one Buffer (joining chunks once). */
  private head(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  private consume(n: number): Buffer {
    const h = this.head();
    const out = h.subarray(0, n);
    const rest = h.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered -= n;
    return out;
  }

  async readByte(): Promise<number> {
    await this.waitFor(1);
    return this.consume(1)[0];
  }

  async readExact(n: number): Promise<Buffer> {
    if (n > this.maxBytes) throw new GossipDecodeError('too_large', `read of ${n} bytes exceeds the limit`);
    await this.waitFor(n);
    return this.consume(n);
  }

  async readValue(limits = STRUCT_LIMITS, maxBytes = MAX_STRUCT_BYTES): Promise<MsgValue> {
    for (;;) {
      try {
        const { value, end } = decodeValue(this.head(), 0, limits);
        this.consume(end);
        return value;
      } catch (err) {
        if (!(err instanceof TruncatedError)) throw err;
        if (err.needed > maxBytes) throw new GossipDecodeError('too_large', 'stream value too large');
        await this.waitFor(err.needed);
      }
    }
  }
}

export interface StreamSecurity extends PacketSecurity {
  compress: boolean;
}

/** Frames an outgoing stream message: compression (always, as memberlist), encryption, label. */
export function frameStream(msg: Buffer, sec: StreamSecurity): Buffer {
  let out = sec.compress ? compressMessage(msg) : msg;
  if (sec.keyring) {
    const label = Buffer.from(sec.label, 'utf8');
    const header = Buffer.allocUnsafe(5);
    header[0] = MsgType.encrypt;
    header.writeUInt32BE(out.length + 29, 1);
    const sealed = encryptPayload(sec.keyring.primary, out, Buffer.concat([header, label]));
    out = Buffer.concat([header, sealed]);
  }
  return addLabel(out, sec.label);
}

export interface OpenedStream {
  type: number;
  source: ValueSource;
}

/**
 * Reads label, encryption and compression framing; returns the inner message type and its source.
 * With a lease, the decrypted and decompressed copies are taken from its budget too.
 */
export async function openStream(
  src: ValueSource,
  sec: PacketSecurity,
  lease: BudgetLease | null = null,
): Promise<OpenedStream> {
  let type = await src.readByte();
  let label = '';
  if (type === MsgType.hasLabel) {
    const n = await src.readByte();
    if (n === 0) throw new GossipDecodeError('label', 'empty label header');
    label = (await src.readExact(n)).toString('utf8');
    type = await src.readByte();
  }
  if (label !== sec.label)
    throw new GossipDecodeError('label', `unexpected stream label ${JSON.stringify(label)}`);
  let source = src;
  if (type === MsgType.encrypt) {
    if (!sec.keyring)
      throw new GossipDecodeError('decrypt', 'remote state is encrypted and encryption is not configured');
    const lenBuf = await src.readExact(4);
    const n = lenBuf.readUInt32BE(0);
    if (n > MAX_STREAM_STATE_BYTES)
      throw new GossipDecodeError('too_large', `remote state of ${n} bytes exceeds the limit`);
    const payload = await src.readExact(n);
    lease?.take(n, 'decrypted stream');
    const aad = Buffer.concat([Buffer.from([MsgType.encrypt]), lenBuf, Buffer.from(label, 'utf8')]);
    const plain = decryptPayload(sec.keyring, payload, aad);
    if (plain.length === 0) throw new GossipDecodeError('truncated', 'empty decrypted stream');
    type = plain[0];
    source = new BufferSource(plain.subarray(1));
  } else if (sec.keyring) {
    throw new GossipDecodeError('decrypt', 'encryption is configured but remote state is not encrypted');
  }
  if (type === MsgType.compress) {
    const c = decodeCompress(
      asStruct(await source.readValue(STRUCT_LIMITS, MAX_STREAM_BYTES), 'compress'),
      MAX_STREAM_BYTES,
    );
    if (c.algo !== 0) throw new GossipDecodeError('compression', `unknown compression algorithm ${c.algo}`);
    // The budget left caps the output, so an oversized one fails before it is allocated.
    const room = lease ? Math.min(MAX_STREAM_BYTES, lease.available) : MAX_STREAM_BYTES;
    let plain: Buffer;
    try {
      plain = lzwDecompress(c.buf, room);
    } catch (err) {
      if (err instanceof GossipDecodeError && err.reason === 'too_large' && room < MAX_STREAM_BYTES)
        throw new GossipDecodeError('budget', 'decompressed stream exceeds the inbound stream memory budget');
      throw err;
    }
    lease?.take(plain.length, 'decompressed stream');
    if (plain.length === 0) throw new GossipDecodeError('truncated', 'empty decompressed stream');
    type = plain[0];
    source = new BufferSource(plain.subarray(1));
  }
  return { type, source };
}
