// The memberlist wire format: our encoders against bytes Go's memberlist encoder produced (fixtures
// captured from test/go/mlpeer's `wire` command), round trips of every message, msgpack edge
// cases, compound framing, CRC, labels, LZW and AES-GCM encryption, and the packet pipeline.
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { apiHostPort } from '../../node/cluster/cluster.ts';
import { decryptPayload, encryptPayload, Keyring } from '../../node/cluster/crypto.ts';
import { GossipDecodeError, KeyFileError, TruncatedError } from '../../node/cluster/errors.ts';
import { bytesToIp, ipToBytes, unmapAddrBytes, unmapIp } from '../../node/cluster/ip.ts';
import { lzwCompress, lzwDecompress } from '../../node/cluster/lzw.ts';
import { decodeValue, MsgWriter, STRUCT_LIMITS } from '../../node/cluster/msgpack.ts';
import { decodePacket, encodePacket } from '../../node/cluster/packet.ts';
import { BufferSource, frameStream, openStream } from '../../node/cluster/stream.ts';
import {
  addCrc,
  addLabel,
  asStruct,
  decodeAck,
  decodeAlive,
  decodeDead,
  decodeIndirectPing,
  decodeNack,
  decodePing,
  decodePushNodeState,
  decodePushPullHeader,
  decodeSuspect,
  encodeAck,
  encodeAlive,
  encodeDead,
  encodeIndirectPing,
  encodeNack,
  encodePing,
  encodeSuspect,
  MsgType,
  makeCompound,
  splitCompound,
  stripCrc,
  stripLabel,
  writePushNodeState,
  writePushPullHeader,
} from '../../node/cluster/wire.ts';
import { GO_WIRE, ourWire } from './fixtures/wire-samples.ts';

const hex = (h: string) => Buffer.from(h, 'hex');
const IP = Buffer.from([127, 0, 0, 1]);
const VSN = Buffer.from([1, 5, 2, 0, 0, 0]);

describe('memberlist messages', () => {
  it('encode byte for byte as Go memberlist does', () => {
    const ours = ourWire();
    for (const [k, h] of Object.entries(GO_WIRE)) {
      assert.equal(ours[k as keyof typeof GO_WIRE].toString('hex'), h, k);
    }
  });

  it('decode the ping Go sent (gossip-wire.md capture)', () => {
    const buf = hex(GO_WIRE.ping);
    assert.equal(buf[0], MsgType.ping);
    assert.deepEqual(decodePing(buf.subarray(1)), {
      seqNo: 1,
      node: 'b',
      sourceAddr: IP,
      sourcePort: 7946,
      sourceNode: 'a',
    });
    // Source fields are omitempty in Go: absent means zero values.
    assert.deepEqual(decodePing(hex(GO_WIRE.pingBare).subarray(1)), {
      seqNo: 300,
      node: 'node-b',
      sourceAddr: null,
      sourcePort: 0,
      sourceNode: '',
    });
  });

  it('round-trip every message', () => {
    const body = (b: Buffer) => b.subarray(1);
    const ind = {
      seqNo: 2 ** 32 - 1,
      target: ipToBytes('::1')!,
      port: 65535,
      node: 'n',
      nack: false,
      sourceAddr: IP,
      sourcePort: 1,
      sourceNode: 'ä-unicode',
    };
    assert.deepEqual(decodeIndirectPing(body(encodeIndirectPing(ind))), ind);
    assert.deepEqual(decodeAck(body(encodeAck({ seqNo: 7, payload: Buffer.from('xy') }))), {
      seqNo: 7,
      payload: Buffer.from('xy'),
    });
    assert.deepEqual(decodeNack(body(encodeNack({ seqNo: 9 }))), { seqNo: 9 });
    const acc = { incarnation: 123456, node: 'x'.repeat(300), from: 'y' };
    assert.deepEqual(decodeSuspect(body(encodeSuspect(acc))), acc);
    assert.deepEqual(decodeDead(body(encodeDead(acc))), acc);
    const alive = { incarnation: 1, node: 'a', addr: IP, port: 7946, meta: Buffer.alloc(512, 7), vsn: VSN };
    assert.deepEqual(decodeAlive(body(encodeAlive(alive))), alive);
    const w = new MsgWriter();
    writePushPullHeader(w, { nodes: 3, userStateLen: 70000, join: false });
    writePushNodeState(w, { name: 'q', addr: IP, port: 1, meta: null, incarnation: 4, state: 2, vsn: VSN });
    const buf = w.finish();
    const h = decodeValue(buf, 0, STRUCT_LIMITS);
    assert.deepEqual(decodePushPullHeader(asStruct(h.value, 'h')), {
      nodes: 3,
      userStateLen: 70000,
      join: false,
    });
    const n = decodeValue(buf, h.end, STRUCT_LIMITS);
    assert.equal(n.end, buf.length);
    assert.deepEqual(decodePushNodeState(asStruct(n.value, 'n')), {
      name: 'q',
      addr: IP,
      port: 1,
      meta: null,
      incarnation: 4,
      state: 2,
      vsn: VSN,
    });
  });

  it('reject wrongly typed, oversized or missing fields', () => {
    const bad = (fields: Array<[string, null | boolean | number | string | Buffer]>) =>
      new MsgWriter().struct(fields).finish();
    assert.throws(() => decodePing(bad([['SeqNo', 'x']])), GossipDecodeError);
    assert.throws(() => decodePing(bad([['SeqNo', -1]])), GossipDecodeError);
    assert.throws(() => decodePing(bad([['SeqNo', 2 ** 32]])), GossipDecodeError);
    assert.throws(() => decodeAlive(bad([['Node', 'a']])), /address/);
    assert.throws(
      () =>
        decodeAlive(
          bad([
            ['Node', 'a'],
            ['Addr', Buffer.alloc(5)],
          ]),
        ),
      /4 or 16/,
    );
    assert.throws(
      () =>
        decodeAlive(
          bad([
            ['Node', 'a'],
            ['Addr', IP],
            ['Meta', Buffer.alloc(513)],
          ]),
        ),
      /exceeds/,
    );
    assert.throws(() => decodeSuspect(bad([['Incarnation', 1]])), /node name/);
    assert.throws(
      () =>
        decodeAlive(
          bad([
            ['Node', 'a'],
            ['Addr', IP],
            ['Vsn', Buffer.from([1, 2])],
          ]),
        ),
      /Vsn/,
    );
    assert.throws(() => decodeNack(Buffer.from([0x91, 0x01])), /expected a map/);
    // Unknown fields are ignored, as go-msgpack ignores them.
    assert.deepEqual(
      decodeNack(
        bad([
          ['SeqNo', 3],
          ['Future', true],
        ]),
      ),
      { seqNo: 3 },
    );
  });
});

describe('msgpack', () => {
  it('decodes every integer, raw and container form Go may send', () => {
    const cases: Array<[string, unknown]> = [
      ['00', 0],
      ['7f', 127],
      ['ff', -1],
      ['e0', -32],
      ['cc80', 128],
      ['cdffff', 65535],
      ['ceffffffff', 4294967295],
      ['cf0000000100000000', 4294967296],
      ['d080', -128],
      ['d1ff00', -256],
      ['d2ffffff00', -256],
      ['d3ffffffffffffff00', -256],
      ['c0', null],
      ['c2', false],
      ['c3', true],
      ['cb3ff8000000000000', 1.5],
      ['ca3fc00000', 1.5],
      ['a3616263', Buffer.from('abc')],
      ['d903616263', Buffer.from('abc')],
      ['da0003616263', Buffer.from('abc')],
      ['db00000003616263', Buffer.from('abc')],
      ['c403616263', Buffer.from('abc')],
      ['c50003616263', Buffer.from('abc')],
      ['c600000003616263', Buffer.from('abc')],
    ];
    for (const [h, v] of cases) assert.deepEqual(decodeValue(hex(h), 0, STRUCT_LIMITS).value, v, h);
  });

  it('writes raw values the old way (never str8 or bin)', () => {
    assert.equal(new MsgWriter().raw(Buffer.alloc(31)).finish()[0], 0xbf);
    assert.equal(new MsgWriter().raw(Buffer.alloc(32)).finish()[0], 0xda);
    assert.equal(new MsgWriter().raw(Buffer.alloc(70000)).finish()[0], 0xdb);
    assert.equal(new MsgWriter().int(-33).finish().toString('hex'), 'd0df');
    assert.equal(
      new MsgWriter()
        .uint(2 ** 40)
        .finish()
        .toString('hex'),
      'cf0000010000000000',
    );
  });

  it('reports truncation with the length needed, and rejects hostile shapes', () => {
    const t = (h: string) => {
      try {
        decodeValue(hex(h), 0, STRUCT_LIMITS);
      } catch (err) {
        return err;
      }
      return null;
    };
    assert.ok(t('db7fffffff') instanceof TruncatedError);
    assert.equal((t('db7fffffff') as TruncatedError).needed, 5 + 0x7fffffff);
    assert.equal((t('a5616263') as TruncatedError).needed, 6);
    assert.match(String(t('dfffffffff')), /entries/);
    assert.match(String(t('8181a161c0')), /deep/);
    assert.match(String(t('c1')), /unsupported/);
    assert.match(String(t('d401ff')), /unsupported/);
    assert.match(String(t('81c3c0')), /key/);
  });
});

describe('framing', () => {
  it('compound messages, including truncated parts', () => {
    const msgs = [encodeNack({ seqNo: 1 }), encodeNack({ seqNo: 2 }), Buffer.alloc(300, 9)];
    const c = makeCompound(msgs);
    assert.equal(c[0], MsgType.compound);
    assert.equal(c[1], 3);
    const { parts, truncated } = splitCompound(c.subarray(1));
    assert.deepEqual(parts, msgs);
    assert.equal(truncated, 0);
    const cut = splitCompound(c.subarray(1, c.length - 10));
    assert.equal(cut.parts.length, 2);
    assert.equal(cut.truncated, 1);
    assert.throws(() => splitCompound(Buffer.from([5, 0])), /truncated/);
  });

  it('CRC header: accepted, verified, optional', () => {
    const m = encodeNack({ seqNo: 1 });
    const withCrc = addCrc(m);
    assert.equal(withCrc[0], MsgType.hasCrc);
    assert.deepEqual(stripCrc(withCrc), m);
    assert.deepEqual(stripCrc(m), m);
    const broken = Buffer.from(withCrc);
    broken[broken.length - 1] ^= 1;
    assert.throws(
      () => stripCrc(broken),
      (e: unknown) => e instanceof GossipDecodeError && e.reason === 'crc',
    );
  });

  it('label header', () => {
    const m = encodeNack({ seqNo: 1 });
    assert.equal(addLabel(m, ''), m);
    const l = addLabel(m, 'prod');
    assert.deepEqual([...l.subarray(0, 6)], [244, 4, ...Buffer.from('prod')]);
    assert.deepEqual(stripLabel(l), { label: 'prod', rest: m });
    assert.throws(() => stripLabel(Buffer.from([244, 0, 1])), /empty label/);
  });
});

describe('LZW (Go compress/lzw, LSB, 8-bit literals)', () => {
  it('matches Go on a small input, both ways', () => {
    const goOut = '00d19461c3e68d40820607160c08'; // Go: lzw.NewWriter(LSB, 8) of "hellohellohello"
    assert.equal(lzwCompress(Buffer.from('hellohellohello')).toString('hex'), goOut);
    assert.equal(lzwDecompress(hex(goOut), 1000).toString(), 'hellohellohello');
  });

  it('round-trips empty, tiny, repetitive and random data (past the 4096-code table reset)', () => {
    const inputs = [
      Buffer.alloc(0),
      Buffer.from([0]),
      Buffer.from('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'),
      randomBytes(100_000),
      Buffer.from('abcdefghij'.repeat(50_000)),
      Buffer.concat([randomBytes(5000), Buffer.alloc(20_000, 'x'), randomBytes(5000)]),
    ];
    for (const input of inputs) {
      const c = lzwCompress(input);
      assert.deepEqual(lzwDecompress(c, input.length + 1), input);
    }
  });

  it('caps the output and rejects corrupt or unterminated streams', () => {
    const c = lzwCompress(Buffer.alloc(100_000));
    assert.throws(
      () => lzwDecompress(c, 1000),
      (e: unknown) => e instanceof GossipDecodeError && e.reason === 'too_large',
    );
    assert.throws(() => lzwDecompress(c.subarray(0, c.length - 2), 200_000), /unexpected end/);
    assert.throws(() => lzwDecompress(Buffer.from([0xff, 0xff, 0xff]), 100), GossipDecodeError);
  });
});

describe('encryption (memberlist keyring)', () => {
  const key = randomBytes(32);
  const ring = new Keyring([key]);

  it('round-trips with and without additional data; 16/24/32-byte keys', () => {
    for (const k of [randomBytes(16), randomBytes(24), randomBytes(32)]) {
      const r = new Keyring([k]);
      const msg = Buffer.from('secret gossip');
      const enc = encryptPayload(k, msg, null);
      assert.equal(enc[0], 1);
      assert.equal(enc.length, 1 + 12 + msg.length + 16);
      assert.deepEqual(decryptPayload(r, enc, null), msg);
      const withAad = encryptPayload(k, msg, Buffer.from('label'));
      assert.deepEqual(decryptPayload(r, withAad, Buffer.from('label')), msg);
      assert.throws(() => decryptPayload(r, withAad, Buffer.from('other')), /no installed keys/);
    }
  });

  it('tries every key of the ring and rejects a wrong key or tampering', () => {
    const other = randomBytes(16);
    const enc = encryptPayload(other, Buffer.from('x'), null);
    assert.throws(
      () => decryptPayload(ring, enc, null),
      (e: unknown) => (e as GossipDecodeError).reason === 'decrypt',
    );
    const both = new Keyring([key, other]);
    assert.deepEqual(decryptPayload(both, enc, null), Buffer.from('x'));
    const t = encryptPayload(key, Buffer.from('payload'), null);
    t[20] ^= 1;
    assert.throws(() => decryptPayload(ring, t, null), /no installed keys/);
    assert.throws(() => decryptPayload(ring, Buffer.from([1, 2, 3]), null), /too small/);
    assert.throws(() => decryptPayload(ring, Buffer.from([2, ...randomBytes(40)]), null), /version/);
  });

  it('decrypts version 0 (PKCS#7 padded) payloads', () => {
    const msg = Buffer.from('old protocol');
    const pad = 16 - (msg.length % 16);
    const padded = Buffer.concat([msg, Buffer.alloc(pad, pad)]);
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', key, nonce);
    const ct = Buffer.concat([c.update(padded), c.final()]);
    const payload = Buffer.concat([Buffer.from([0]), nonce, ct, c.getAuthTag()]);
    assert.deepEqual(decryptPayload(ring, payload, null), msg);
  });

  it('key file: base64 lines or a JSON array, first key primary, clear errors', () => {
    const dir = mkdtempSync(join(tmpdir(), 'oklog-key-'));
    try {
      const k1 = randomBytes(32).toString('base64');
      const k2 = randomBytes(16).toString('base64');
      const f = join(dir, 'cluster.key');
      writeFileSync(f, `# rotation in progress\n${k1}\n\n${k2}\n`);
      const r = Keyring.fromFile(f);
      assert.equal(r.keys.length, 2);
      assert.equal(r.primary.toString('base64'), k1);
      writeFileSync(f, JSON.stringify([k2, k1]));
      assert.equal(Keyring.fromFile(f).primary.toString('base64'), k2);
      writeFileSync(f, 'not base64!\n');
      assert.throws(() => Keyring.fromFile(f), KeyFileError);
      writeFileSync(f, `${randomBytes(20).toString('base64')}\n`);
      assert.throws(() => Keyring.fromFile(f), /20 bytes/);
      writeFileSync(f, '\n# empty\n');
      assert.throws(() => Keyring.fromFile(f), /no keys/);
      assert.throws(() => Keyring.fromFile(join(dir, 'missing')), /reading -cluster.key/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('packet and stream pipelines', () => {
  const ring = new Keyring([randomBytes(16)]);

  it('packet: compress when smaller, CRC, encryption, label, compound unfolding', () => {
    const msgs = Array.from({ length: 5 }, (_, i) =>
      encodeAlive({
        incarnation: i + 1,
        node: `node-${i}`,
        addr: IP,
        port: 7946,
        meta: Buffer.alloc(100, 'm'),
        vsn: VSN,
      }),
    );
    const compound = makeCompound(msgs);
    for (const sec of [
      { keyring: null, label: '' },
      { keyring: ring, label: '' },
      { keyring: ring, label: 'prod' },
      { keyring: null, label: 'prod' },
    ]) {
      for (const crc of [false, true]) {
        const pkt = encodePacket(compound, { ...sec, compress: true, crc });
        assert.ok(pkt.length < compound.length + 64);
        const d = decodePacket(pkt, sec);
        assert.deepEqual(
          d.messages.map((m) => decodeAlive(m.body).node),
          msgs.map((_, i) => `node-${i}`),
        );
        assert.deepEqual(d.dropped, []);
      }
    }
    const small = encodeNack({ seqNo: 1 });
    assert.deepEqual(encodePacket(small, { keyring: null, label: '', compress: true, crc: false }), small);
    const labelled = encodePacket(small, { keyring: null, label: 'a', compress: false, crc: false });
    assert.throws(() => decodePacket(labelled, { keyring: null, label: '' }), /label/);
    assert.throws(
      () => decodePacket(small, { keyring: ring, label: '' }),
      (e: unknown) => e instanceof GossipDecodeError && e.reason === 'decrypt',
    );
    assert.throws(() => decodePacket(Buffer.from([99]), { keyring: null, label: '' }), /not supported/);
  });

  it('stream: compressed and encrypted framing opens back to the message', async () => {
    const msg = encodePing({ seqNo: 42, node: 'x' });
    for (const sec of [
      { compress: true, keyring: null, label: '' },
      { compress: false, keyring: ring, label: '' },
      { compress: true, keyring: ring, label: 'lbl' },
    ]) {
      const framed = frameStream(msg, sec);
      const { type, source } = await openStream(new BufferSource(framed), sec);
      assert.equal(type, MsgType.ping);
      assert.equal(decodePing(msg.subarray(1)).seqNo, 42);
      const v = await source.readValue();
      assert.ok(v instanceof Map && v.get('SeqNo') === 42);
    }
    const enc = frameStream(msg, { compress: false, keyring: ring, label: '' });
    await assert.rejects(openStream(new BufferSource(enc), { keyring: null, label: '' }), /not configured/);
    await assert.rejects(openStream(new BufferSource(msg), { keyring: ring, label: '' }), /not encrypted/);
    const huge = Buffer.from([MsgType.encrypt, 0xff, 0xff, 0xff, 0xff]);
    await assert.rejects(openStream(new BufferSource(huge), { keyring: ring, label: '' }), /exceeds/);
  });

  it('IP helpers', () => {
    assert.equal(bytesToIp(ipToBytes('10.1.2.3')), '10.1.2.3');
    assert.equal(bytesToIp(ipToBytes('::ffff:10.1.2.3')), '10.1.2.3');
    assert.equal(bytesToIp(ipToBytes('2001:db8::1')), '2001:db8::1');
    assert.equal(ipToBytes('nope'), null);
    assert.equal(bytesToIp(Buffer.alloc(5)), null);
    // What a dual-stack socket reports for an IPv4 peer, back to IPv4; anything else unchanged.
    assert.equal(unmapIp('::ffff:10.1.2.3'), '10.1.2.3');
    assert.equal(unmapIp('::FFFF:127.0.0.1'), '127.0.0.1');
    assert.equal(unmapIp('10.1.2.3'), '10.1.2.3');
    assert.equal(unmapIp('fd00::2'), 'fd00::2');
    assert.equal(unmapIp('fe80::1%eth0'), 'fe80::1%eth0');
    assert.deepEqual(unmapAddrBytes(ipToBytes('fd00::2') as Buffer), ipToBytes('fd00::2'));
  });

  it('an IPv4-mapped 16-byte Addr on the wire is read as the 4-byte IPv4 address', () => {
    const mapped = Buffer.concat([Buffer.alloc(10), Buffer.from([0xff, 0xff, 10, 0, 0, 7])]);
    const a = decodeAlive(
      encodeAlive({ incarnation: 1, node: 'n', addr: mapped, port: 7946, meta: null, vsn: VSN }).subarray(1),
    );
    assert.deepEqual(a.addr, Buffer.from([10, 0, 0, 7]));
    // and re-encoded as 4 bytes, as Go memberlist sends an IPv4 member (To4()).
    const again = decodeAlive(encodeAlive(a).subarray(1));
    assert.equal(again.addr.length, 4);
    const v6 = ipToBytes('fd00::7') as Buffer;
    assert.deepEqual(
      decodeAlive(encodeAlive({ ...a, addr: v6 }).subarray(1)).addr,
      v6,
      'a real IPv6 address stays 16 bytes',
    );
  });

  it('API addresses from the peer map, as host:port: IPv6 bracketed, mapped unmapped, wildcard replaced', () => {
    const e = (api_addr: string) => ({ type: 'store' as const, api_addr, api_port: 7650 });
    assert.equal(apiHostPort(e('10.0.0.5'), '10.0.0.5'), '10.0.0.5:7650');
    assert.equal(apiHostPort(e('fd00::2'), 'fd00::2'), '[fd00::2]:7650');
    assert.equal(apiHostPort(e('[fd00::2]'), 'fd00::2'), '[fd00::2]:7650');
    assert.equal(apiHostPort(e('::ffff:10.0.0.5'), '10.0.0.5'), '10.0.0.5:7650');
    assert.equal(apiHostPort(e('0.0.0.0'), '10.0.0.9'), '10.0.0.9:7650');
    assert.equal(apiHostPort(e(''), 'fd00::9'), '[fd00::9]:7650');
    assert.equal(apiHostPort(e('api.example'), '10.0.0.9'), 'api.example:7650');
  });
});
