// Gossip encryption compatible with memberlist's keyring: AES-GCM with a 16, 24 or 32-byte key
// (AES-128/192/256), payload `[version][12-byte nonce][ciphertext ‖ 16-byte tag]`. Version 1 (no
// padding) is what memberlist sends at protocol ≥ 2; version 0 (PKCS#7 padded) is still accepted
// on receipt. Incoming data is tried against every installed key, primary first.
//
// Key file (`-cluster.key`): one key per line, each the standard base64 encoding of 16, 24 or 32
// random bytes (as `serf keygen` / `consul keygen` print; e.g. `openssl rand -base64 32`). The
// first key is the primary (used to encrypt); the others are accepted on receipt, for rotation.
// Blank lines and lines starting with `#` are ignored. A JSON array of base64 keys (the format of
// Serf's and Consul's keyring files) is accepted too.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { GossipDecodeError, KeyFileError } from './errors.ts';

const VERSION_SIZE = 1;
const NONCE_SIZE = 12;
const TAG_SIZE = 16;
const BLOCK_SIZE = 16;

/** Bytes added by encryption version 1 (memberlist's encryptOverhead). */
export const ENCRYPT_OVERHEAD = VERSION_SIZE + NONCE_SIZE + TAG_SIZE;

function algorithm(key: Buffer): 'aes-128-gcm' | 'aes-192-gcm' | 'aes-256-gcm' {
  switch (key.length) {
    case 16:
      return 'aes-128-gcm';
    case 24:
      return 'aes-192-gcm';
    case 32:
      return 'aes-256-gcm';
    default:
      throw new KeyFileError(`key size must be 16, 24 or 32 bytes, not ${key.length}`);
  }
}

export class Keyring {
  readonly keys: readonly Buffer[];

  constructor(keys: Buffer[]) {
    if (keys.length === 0) throw new KeyFileError('keyring has no keys');
    const uniq: Buffer[] = [];
    for (const k of keys) {
      algorithm(k);
      if (!uniq.some((u) => u.equals(k))) uniq.push(Buffer.from(k));
    }
    this.keys = uniq;
  }

  get primary(): Buffer {
    return this.keys[0];
  }

  /** Parses key-file text (see the header comment). */
  static parse(text: string, source = 'key file'): Keyring {
    const trimmed = text.trim();
    let encoded: string[];
    if (trimmed.startsWith('[')) {
      let arr: unknown;
      try {
        arr = JSON.parse(trimmed);
      } catch (err) {
        throw new KeyFileError(`${source}: invalid JSON keyring: ${(err as Error).message}`);
      }
      if (!Array.isArray(arr) || !arr.every((x) => typeof x === 'string'))
        throw new KeyFileError(`${source}: a JSON keyring must be an array of base64 strings`);
      encoded = arr as string[];
    } else {
      encoded = trimmed
        .split(/\r?\n/)
        .map((l) => l.trim())
        .filter((l) => l !== '' && !l.startsWith('#'));
    }
    if (encoded.length === 0) throw new KeyFileError(`${source}: no keys found`);
    const keys = encoded.map((e, i) => {
      if (!/^[A-Za-z0-9+/]+={0,2}$/.test(e) || e.length % 4 !== 0)
        throw new KeyFileError(`${source}: key ${i + 1} is not valid base64`);
      const k = Buffer.from(e, 'base64');
      if (k.length !== 16 && k.length !== 24 && k.length !== 32)
        throw new KeyFileError(`${source}: key ${i + 1} decodes to ${k.length} bytes; need 16, 24 or 32`);
      return k;
    });
    return new Keyring(keys);
  }

  static fromFile(path: string): Keyring {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new KeyFileError(`reading -cluster.key ${path}: ${(err as Error).message}`, { path });
    }
    return Keyring.parse(text, path);
  }
}

/** Encrypts with encryption version 1; `aad` is the additional authenticated data. */
export function encryptPayload(key: Buffer, msg: Buffer, aad: Buffer | null): Buffer {
  const nonce = randomBytes(NONCE_SIZE);
  const cipher = createCipheriv(algorithm(key), key, nonce);
  if (aad && aad.length > 0) cipher.setAAD(aad);
  const body = cipher.update(msg);
  const fin = cipher.final();
  const tag = cipher.getAuthTag();
  return Buffer.concat([Buffer.from([1]), nonce, body, fin, tag]);
}

/** Length of the version-1 encryption of `n` plaintext bytes. */
export function encryptedLength(n: number): number {
  return ENCRYPT_OVERHEAD + n;
}

function tryDecrypt(key: Buffer, payload: Buffer, aad: Buffer | null): Buffer | null {
  try {
    const nonce = payload.subarray(VERSION_SIZE, VERSION_SIZE + NONCE_SIZE);
    const ct = payload.subarray(VERSION_SIZE + NONCE_SIZE, payload.length - TAG_SIZE);
    const tag = payload.subarray(payload.length - TAG_SIZE);
    const d = createDecipheriv(algorithm(key), key, nonce);
    if (aad && aad.length > 0) d.setAAD(aad);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  } catch {
    return null;
  }
}

/** Decrypts with any key of the ring; throws GossipDecodeError('decrypt') when none fits. */
export function decryptPayload(keyring: Keyring, payload: Buffer, aad: Buffer | null): Buffer {
  if (payload.length === 0) throw new GossipDecodeError('decrypt', 'cannot decrypt an empty payload');
  const vsn = payload[0];
  if (vsn > 1) throw new GossipDecodeError('decrypt', `unsupported encryption version ${vsn}`);
  const min = VERSION_SIZE + NONCE_SIZE + TAG_SIZE + (vsn === 0 ? BLOCK_SIZE : 0);
  if (payload.length < min)
    throw new GossipDecodeError('decrypt', `payload is too small to decrypt: ${payload.length}`);
  for (const key of keyring.keys) {
    const plain = tryDecrypt(key, payload, aad);
    if (plain === null) continue;
    if (vsn === 1) return plain;
    // Version 0: PKCS#7 padding to the AES block size.
    const pad = plain.length > 0 ? plain[plain.length - 1] : 0;
    if (pad < 1 || pad > BLOCK_SIZE || pad > plain.length)
      throw new GossipDecodeError('decrypt', 'invalid padding');
    return plain.subarray(0, plain.length - pad);
  }
  throw new GossipDecodeError('decrypt', 'no installed keys could decrypt the message');
}
