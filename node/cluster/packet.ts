// The UDP packet pipeline. Outbound: message (or compound) → LZW compression when smaller → CRC
// for peers that speak protocol ≥ 5 → AES-GCM → label. Inbound, the reverse, accepting packets
// with and without CRC, and unfolding compound and compressed messages into a flat list. Every
// failure is a GossipDecodeError with a drop reason; nothing here throws anything else.
import { decryptPayload, encryptPayload, type Keyring } from './crypto.ts';
import { type DropReason, GossipDecodeError } from './errors.ts';
import { lzwCompress, lzwDecompress } from './lzw.ts';
import { decodeValue, STRUCT_LIMITS } from './msgpack.ts';
import {
  addCrc,
  addLabel,
  asStruct,
  decodeCompress,
  encodeCompress,
  MsgType,
  splitCompound,
  stripCrc,
  stripLabel,
} from './wire.ts';

/** Largest datagram we read (memberlist's udpPacketBufSize). */
export const MAX_PACKET_BYTES = 65536;
/** Cap on a decompressed packet. */
export const MAX_DECOMPRESSED_PACKET_BYTES = 1024 * 1024;
/** Compound and compressed messages nest at most this deep. */
const MAX_NESTING = 4;

export interface PacketSecurity {
  keyring: Keyring | null;
  label: string;
}

export interface OutboundOptions extends PacketSecurity {
  compress: boolean;
  /** The recipient advertises protocol ≥ 5 and so checks a CRC. */
  crc: boolean;
}

/** LZW-wraps a message as `[9]{Algo: 0, Buf}`. */
export function compressMessage(msg: Buffer): Buffer {
  return encodeCompress({ algo: 0, buf: lzwCompress(msg) });
}

export function encodePacket(msg: Buffer, o: OutboundOptions): Buffer {
  let out = msg;
  if (o.compress) {
    const c = compressMessage(out);
    if (c.length < out.length) out = c;
  }
  if (o.crc) out = addCrc(out);
  if (o.keyring) out = encryptPayload(o.keyring.primary, out, o.label ? Buffer.from(o.label) : null);
  return addLabel(out, o.label);
}

export interface InboundMessage {
  type: number;
  /** The message body after its type byte. */
  body: Buffer;
}

export interface DecodedPacket {
  messages: InboundMessage[];
  /** Compound parts dropped (truncated or undecodable); the other parts are still delivered. */
  dropped: DropReason[];
}

/** Unwraps label, encryption and CRC, then unfolds compound/compressed messages. */
export function decodePacket(buf: Buffer, sec: PacketSecurity): DecodedPacket {
  if (buf.length === 0) throw new GossipDecodeError('truncated', 'empty packet');
  if (buf.length > MAX_PACKET_BYTES) throw new GossipDecodeError('too_large', 'packet too large');
  const { label, rest } = stripLabel(buf);
  if (label !== sec.label)
    throw new GossipDecodeError('label', `unexpected packet label ${JSON.stringify(label)}`);
  let plain = rest;
  if (sec.keyring) plain = decryptPayload(sec.keyring, plain, label ? Buffer.from(label) : null);
  plain = stripCrc(plain);
  const out: DecodedPacket = { messages: [], dropped: [] };
  unfold(plain, out, 0);
  return out;
}

function unfold(buf: Buffer, out: DecodedPacket, depth: number): void {
  if (buf.length === 0) throw new GossipDecodeError('truncated', 'empty message');
  if (depth > MAX_NESTING) throw new GossipDecodeError('malformed', 'messages nested too deep');
  const type = buf[0];
  const body = buf.subarray(1);
  switch (type) {
    case MsgType.compound: {
      const { parts, truncated } = splitCompound(body);
      for (let i = 0; i < truncated; i++) out.dropped.push('truncated');
      for (const p of parts) {
        try {
          unfold(p, out, depth + 1);
        } catch (err) {
          out.dropped.push(err instanceof GossipDecodeError ? err.reason : 'malformed');
        }
      }
      return;
    }
    case MsgType.compress: {
      const c = decodeCompress(
        asStruct(decodeValue(body, 0, STRUCT_LIMITS).value, 'compress'),
        MAX_PACKET_BYTES,
      );
      if (c.algo !== 0) throw new GossipDecodeError('compression', `unknown compression algorithm ${c.algo}`);
      unfold(lzwDecompress(c.buf, MAX_DECOMPRESSED_PACKET_BYTES), out, depth + 1);
      return;
    }
    case MsgType.ping:
    case MsgType.indirectPing:
    case MsgType.ack:
    case MsgType.nack:
    case MsgType.suspect:
    case MsgType.alive:
    case MsgType.dead:
    case MsgType.user:
      out.messages.push({ type, body });
      return;
    default:
      throw new GossipDecodeError('unknown_type', `message type ${type} not supported in a packet`);
  }
}
