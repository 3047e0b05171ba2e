// memberlist's messages: type bytes, one encoder and one strict decoder per message (a msgpack
// map keyed by Go field names, sorted by name as go-msgpack does), compound framing, the CRC
// header and the label header. Decoders check every field's type and size; missing fields take
// Go's zero values, unknown fields are ignored (as go-msgpack does).
import { crc32 } from 'node:zlib';
import { GossipDecodeError } from './errors.ts';
import { unmapAddrBytes } from './ip.ts';
import { decodeValue, type EncValue, type MsgValue, MsgWriter, STRUCT_LIMITS } from './msgpack.ts';

export const MsgType = {
  ping: 0,
  indirectPing: 1,
  ack: 2,
  suspect: 3,
  alive: 4,
  dead: 5,
  pushPull: 6,
  compound: 7,
  user: 8,
  compress: 9,
  encrypt: 10,
  nack: 11,
  hasCrc: 12,
  err: 13,
  hasLabel: 244,
} as const;
export type MsgTypeValue = (typeof MsgType)[keyof typeof MsgType];

export const NodeStateType = { alive: 0, suspect: 1, dead: 2, left: 3 } as const;
export type NodeStateValue = (typeof NodeStateType)[keyof typeof NodeStateType];

/** Caps on decoded fields: generous for real peers, small enough that nothing grows unbounded. */
export const MAX_NAME_BYTES = 1024;
export const MAX_META_BYTES = 512;
export const MAX_PAYLOAD_BYTES = 64 * 1024;
export const LABEL_MAX = 255;

export interface Ping {
  seqNo: number;
  node: string;
  sourceAddr?: Buffer | null;
  sourcePort?: number;
  sourceNode?: string;
}
export interface IndirectPing {
  seqNo: number;
  target: Buffer;
  port: number;
  node: string;
  nack: boolean;
  sourceAddr?: Buffer | null;
  sourcePort?: number;
  sourceNode?: string;
}
export interface Ack {
  seqNo: number;
  payload: Buffer | null;
}
export interface Nack {
  seqNo: number;
}
export interface ErrResp {
  error: string;
}
export interface Suspect {
  incarnation: number;
  node: string;
  from: string;
}
export interface Dead {
  incarnation: number;
  node: string;
  from: string;
}
export interface Alive {
  incarnation: number;
  node: string;
  addr: Buffer;
  port: number;
  meta: Buffer | null;
  /** pmin, pmax, pcur, dmin, dmax, dcur (may be empty from very old peers). */
  vsn: Buffer;
}
export interface PushPullHeader {
  nodes: number;
  userStateLen: number;
  join: boolean;
}
export interface PushNodeState {
  name: string;
  addr: Buffer;
  port: number;
  meta: Buffer | null;
  incarnation: number;
  state: number;
  vsn: Buffer;
}
export interface Compress {
  algo: number;
  buf: Buffer;
}
export interface UserMsgHeader {
  userMsgLen: number;
}

// ---- encoding ----

function encode(type: number, fields: ReadonlyArray<readonly [string, EncValue]>): Buffer {
  const w = new MsgWriter(64);
  w.byte(type);
  w.struct(fields);
  return Buffer.from(w.finish());
}

/** Go's `omitempty` on the Source* fields of ping and indirect ping. */
function sourceFields(m: {
  sourceAddr?: Buffer | null;
  sourcePort?: number;
  sourceNode?: string;
}): Array<[string, EncValue]> {
  const f: Array<[string, EncValue]> = [];
  if (m.sourceAddr && m.sourceAddr.length > 0) f.push(['SourceAddr', m.sourceAddr]);
  if (m.sourcePort) f.push(['SourcePort', m.sourcePort]);
  if (m.sourceNode) f.push(['SourceNode', m.sourceNode]);
  return f;
}

export function encodePing(m: Ping): Buffer {
  return encode(MsgType.ping, [['SeqNo', m.seqNo], ['Node', m.node], ...sourceFields(m)]);
}

export function encodeIndirectPing(m: IndirectPing): Buffer {
  return encode(MsgType.indirectPing, [
    ['SeqNo', m.seqNo],
    ['Target', m.target],
    ['Port', m.port],
    ['Node', m.node],
    ['Nack', m.nack],
    ...sourceFields(m),
  ]);
}

export function encodeAck(m: Ack): Buffer {
  return encode(MsgType.ack, [
    ['SeqNo', m.seqNo],
    ['Payload', m.payload],
  ]);
}

export function encodeNack(m: Nack): Buffer {
  return encode(MsgType.nack, [['SeqNo', m.seqNo]]);
}

export function encodeErr(m: ErrResp): Buffer {
  return encode(MsgType.err, [['Error', m.error]]);
}

export function encodeSuspect(m: Suspect): Buffer {
  return encode(MsgType.suspect, [
    ['Incarnation', m.incarnation],
    ['Node', m.node],
    ['From', m.from],
  ]);
}

export function encodeDead(m: Dead): Buffer {
  return encode(MsgType.dead, [
    ['Incarnation', m.incarnation],
    ['Node', m.node],
    ['From', m.from],
  ]);
}

export function encodeAlive(m: Alive): Buffer {
  return encode(MsgType.alive, [
    ['Incarnation', m.incarnation],
    ['Node', m.node],
    ['Addr', m.addr],
    ['Port', m.port],
    ['Meta', m.meta],
    ['Vsn', m.vsn],
  ]);
}

export function encodeCompress(m: Compress): Buffer {
  return encode(MsgType.compress, [
    ['Algo', m.algo],
    ['Buf', m.buf],
  ]);
}

/** Header and node states are written into `w` without a type byte (stream bodies). */
export function writePushPullHeader(w: MsgWriter, h: PushPullHeader): void {
  w.struct([
    ['Nodes', h.nodes],
    ['UserStateLen', h.userStateLen],
    ['Join', h.join],
  ]);
}

export function writePushNodeState(w: MsgWriter, n: PushNodeState): void {
  w.struct([
    ['Name', n.name],
    ['Addr', n.addr],
    ['Port', n.port],
    ['Meta', n.meta],
    ['Incarnation', n.incarnation],
    ['State', n.state],
    ['Vsn', n.vsn],
  ]);
}

export function writeUserMsgHeader(w: MsgWriter, h: UserMsgHeader): void {
  w.struct([['UserMsgLen', h.userMsgLen]]);
}

// ---- decoding ----

type Fields = Map<string, MsgValue>;

function malformed(msg: string): never {
  throw new GossipDecodeError('malformed', msg);
}

export function asStruct(v: MsgValue, what: string): Fields {
  if (!(v instanceof Map)) malformed(`${what}: expected a map`);
  return v;
}

/** Decodes a whole message body (after the type byte) as one struct; trailing bytes are ignored. */
export function decodeStruct(body: Buffer, what: string): Fields {
  return asStruct(decodeValue(body, 0, STRUCT_LIMITS).value, what);
}

function uintField(f: Fields, key: string, max: number): number {
  const v = f.get(key);
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max)
    malformed(`${key}: expected an integer in 0..${max}`);
  return v;
}

function intField(f: Fields, key: string): number {
  const v = f.get(key);
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isInteger(v)) malformed(`${key}: expected an integer`);
  return v;
}

function boolField(f: Fields, key: string): boolean {
  const v = f.get(key);
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') malformed(`${key}: expected a boolean`);
  return v;
}

function bytesField(f: Fields, key: string, maxLen: number): Buffer | null {
  const v = f.get(key);
  if (v === undefined || v === null) return null;
  if (!Buffer.isBuffer(v)) malformed(`${key}: expected bytes`);
  if (v.length > maxLen) malformed(`${key}: ${v.length} bytes exceeds ${maxLen}`);
  return Buffer.from(v); // own copy: never keep the packet alive through a view
}

function strField(f: Fields, key: string, maxLen: number): string {
  const v = f.get(key);
  if (v === undefined || v === null) return '';
  if (!Buffer.isBuffer(v)) malformed(`${key}: expected a string`);
  if (v.length > maxLen) malformed(`${key}: ${v.length} bytes exceeds ${maxLen}`);
  return v.toString('utf8');
}

function addrField(f: Fields, key: string): Buffer | null {
  const b = bytesField(f, key, 16);
  if (b && b.length !== 0 && b.length !== 4 && b.length !== 16)
    malformed(`${key}: an IP address has 4 or 16 bytes, not ${b.length}`);
  // An IPv4 member is 4 bytes everywhere (Go sends To4()); a mapped 16-byte form from some other
  // peer would otherwise be stored, compared and re-gossiped as a different address.
  return b && b.length > 0 ? unmapAddrBytes(b) : null;
}

const U32 = 0xffffffff;
const U16 = 0xffff;

export function decodePing(body: Buffer): Ping {
  return pingFromFields(decodeStruct(body, 'ping'));
}

export function pingFromFields(f: Fields): Ping {
  return {
    seqNo: uintField(f, 'SeqNo', U32),
    node: strField(f, 'Node', MAX_NAME_BYTES),
    sourceAddr: addrField(f, 'SourceAddr'),
    sourcePort: uintField(f, 'SourcePort', U16),
    sourceNode: strField(f, 'SourceNode', MAX_NAME_BYTES),
  };
}

export function decodeIndirectPing(body: Buffer): IndirectPing {
  const f = decodeStruct(body, 'indirect ping');
  const target = addrField(f, 'Target');
  if (!target) malformed('indirect ping without a target address');
  return {
    seqNo: uintField(f, 'SeqNo', U32),
    target,
    port: uintField(f, 'Port', U16),
    node: strField(f, 'Node', MAX_NAME_BYTES),
    nack: boolField(f, 'Nack'),
    sourceAddr: addrField(f, 'SourceAddr'),
    sourcePort: uintField(f, 'SourcePort', U16),
    sourceNode: strField(f, 'SourceNode', MAX_NAME_BYTES),
  };
}

export function decodeAck(body: Buffer): Ack {
  return ackFromFields(decodeStruct(body, 'ack'));
}

export function ackFromFields(f: Fields): Ack {
  return { seqNo: uintField(f, 'SeqNo', U32), payload: bytesField(f, 'Payload', MAX_PAYLOAD_BYTES) };
}

export function decodeNack(body: Buffer): Nack {
  return { seqNo: uintField(decodeStruct(body, 'nack'), 'SeqNo', U32) };
}

export function decodeErr(f: Fields): ErrResp {
  return { error: strField(f, 'Error', MAX_PAYLOAD_BYTES) };
}

function decodeAccusation(body: Buffer, what: string): Suspect {
  const f = decodeStruct(body, what);
  const node = strField(f, 'Node', MAX_NAME_BYTES);
  if (node === '') malformed(`${what} without a node name`);
  return {
    incarnation: uintField(f, 'Incarnation', U32),
    node,
    from: strField(f, 'From', MAX_NAME_BYTES),
  };
}

export function decodeSuspect(body: Buffer): Suspect {
  return decodeAccusation(body, 'suspect');
}

export function decodeDead(body: Buffer): Dead {
  return decodeAccusation(body, 'dead');
}

function vsnField(f: Fields): Buffer {
  const v = bytesField(f, 'Vsn', 64) ?? Buffer.alloc(0);
  if (v.length !== 0 && v.length < 6) malformed(`Vsn: expected 6 versions, got ${v.length}`);
  return v;
}

export function decodeAlive(body: Buffer): Alive {
  const f = decodeStruct(body, 'alive');
  const node = strField(f, 'Node', MAX_NAME_BYTES);
  if (node === '') malformed('alive without a node name');
  const addr = addrField(f, 'Addr');
  if (!addr) malformed('alive without an address');
  return {
    incarnation: uintField(f, 'Incarnation', U32),
    node,
    addr,
    port: uintField(f, 'Port', U16),
    meta: bytesField(f, 'Meta', MAX_META_BYTES),
    vsn: vsnField(f),
  };
}

export function decodePushPullHeader(f: Fields): PushPullHeader {
  return {
    nodes: intField(f, 'Nodes'),
    userStateLen: intField(f, 'UserStateLen'),
    join: boolField(f, 'Join'),
  };
}

export function decodePushNodeState(f: Fields): PushNodeState {
  const name = strField(f, 'Name', MAX_NAME_BYTES);
  if (name === '') malformed('push/pull node state without a name');
  const addr = addrField(f, 'Addr');
  if (!addr) malformed(`push/pull node state for ${name} without an address`);
  return {
    name,
    addr,
    port: uintField(f, 'Port', U16),
    meta: bytesField(f, 'Meta', MAX_META_BYTES),
    incarnation: uintField(f, 'Incarnation', U32),
    state: intField(f, 'State'),
    vsn: vsnField(f),
  };
}

export function decodeCompress(f: Fields, maxBuf: number): Compress {
  return { algo: intField(f, 'Algo'), buf: bytesField(f, 'Buf', maxBuf) ?? Buffer.alloc(0) };
}

export function decodeUserMsgHeader(f: Fields): UserMsgHeader {
  return { userMsgLen: intField(f, 'UserMsgLen') };
}

// ---- framing ----

/** `[7][count u8][count × length u16 BE][messages…]`; at most 255 parts of ≤ 65535 bytes. */
export function makeCompound(msgs: readonly Buffer[]): Buffer {
  if (msgs.length > 255) throw new RangeError('compound message with more than 255 parts');
  let total = 2 + msgs.length * 2;
  for (const m of msgs) {
    if (m.length > 0xffff) throw new RangeError('compound part larger than 65535 bytes');
    total += m.length;
  }
  const out = Buffer.allocUnsafe(total);
  out[0] = MsgType.compound;
  out[1] = msgs.length;
  let off = 2;
  for (const m of msgs) {
    out.writeUInt16BE(m.length, off);
    off += 2;
  }
  for (const m of msgs) {
    m.copy(out, off);
    off += m.length;
  }
  return out;
}

/** Splits a compound body (after the type byte); `truncated` counts parts cut off by the end. */
export function splitCompound(body: Buffer): { parts: Buffer[]; truncated: number } {
  if (body.length < 1) throw new GossipDecodeError('truncated', 'missing compound length byte');
  const n = body[0];
  if (body.length < 1 + n * 2) throw new GossipDecodeError('truncated', 'truncated compound length slice');
  const parts: Buffer[] = [];
  let off = 1 + n * 2;
  for (let i = 0; i < n; i++) {
    const len = body.readUInt16BE(1 + i * 2);
    if (off + len > body.length) return { parts, truncated: n - i };
    parts.push(body.subarray(off, off + len));
    off += len;
  }
  return { parts, truncated: 0 };
}

/** `[12][crc32 IEEE u32 BE]` + message. */
export function addCrc(msg: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + msg.length);
  out[0] = MsgType.hasCrc;
  out.writeUInt32BE(crc32(msg), 1);
  msg.copy(out, 5);
  return out;
}

/** Verifies and strips a CRC header when present (throws `crc` on mismatch). */
export function stripCrc(buf: Buffer): Buffer {
  if (buf.length >= 5 && buf[0] === MsgType.hasCrc) {
    const body = buf.subarray(5);
    if (crc32(body) !== buf.readUInt32BE(1)) throw new GossipDecodeError('crc', 'invalid packet checksum');
    return body;
  }
  return buf;
}

/** `[244][length u8][label]` + rest, or the buffer unchanged for an empty label. */
export function addLabel(buf: Buffer, label: string): Buffer {
  if (label === '') return buf;
  const l = Buffer.from(label, 'utf8');
  if (l.length > LABEL_MAX) throw new RangeError(`label longer than ${LABEL_MAX} bytes`);
  return Buffer.concat([Buffer.from([MsgType.hasLabel, l.length]), l, buf]);
}

/** Splits off a label header if present; returns the label ('' when none) and the rest. */
export function stripLabel(buf: Buffer): { label: string; rest: Buffer } {
  if (buf.length < 1 || buf[0] !== MsgType.hasLabel) return { label: '', rest: buf };
  if (buf.length < 2) throw new GossipDecodeError('truncated', 'truncated label header');
  const n = buf[1];
  if (n === 0) throw new GossipDecodeError('label', 'empty label header');
  if (buf.length < 2 + n) throw new GossipDecodeError('truncated', 'truncated label');
  return { label: buf.subarray(2, 2 + n).toString('utf8'), rest: buf.subarray(2 + n) };
}
