// Poison segments (reference §11.2 item 1). OK Log failed a segment it could not merge back to
// its ingester, whose oldest-first choice then handed the same segment out again, forever: that
// ingester's backlog was stuck for good.
//
// Only the ingest node may move its own files, and `/ingest/next` does not say which file a claim
// is. So the consumer recognises a segment by what it is: the ingester's address plus a SHA-256
// of the segment's bytes. The first failure fails the claim back (it may have been a one-off);
// when the same content fails again, its bytes are written aside into the store's quarantine
// folder (fsynced) and only then is the claim COMMITTED, which removes it from the ingester. No
// record is lost: the quarantined file holds exactly what the ingester had, for a human (or a
// repair tool) to look at, e.g. `<store.path>/quarantine/<ingester>-<time>-<hash>.segment`.
import { createHash, type Hash, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { FileSystem, WritableFile } from '../fs/types.ts';

/** The quarantine folder's name inside the store directory (`<store.path>/quarantine`). */
export const QUARANTINE_DIR = 'quarantine';

/** Content identity of a failed segment. */
export function segmentFingerprint(ingester: string, body: Buffer): string {
  return `${ingester} ${createHash('sha256').update(body).digest('hex')}`;
}

/**
 * Counts merge failures per fingerprint. Bounded (oldest forgotten first) and time-limited, so a
 * flood of distinct bad segments cannot grow it; forgetting only costs one more failed attempt.
 */
export class FailureMemo {
  private readonly seen = new Map<string, { count: number; at: number }>();
  constructor(
    private readonly now: () => number,
    private readonly limit = 1024,
    private readonly ttlMs = 3_600_000,
  ) {}

  /** How many times `key` has failed (within the TTL), without recording anything. */
  count(key: string): number {
    const prev = this.seen.get(key);
    return prev !== undefined && this.now() - prev.at <= this.ttlMs ? prev.count : 0;
  }

  /** Records one failure of `key`; returns how many times it has failed (1 the first time). */
  fail(key: string): number {
    const t = this.now();
    const prev = this.seen.get(key);
    const count = prev !== undefined && t - prev.at <= this.ttlMs ? prev.count + 1 : 1;
    this.seen.delete(key); // re-insert: Map order is then least recently failed first
    this.seen.set(key, { count, at: t });
    while (this.seen.size > this.limit) {
      const oldest = this.seen.keys().next().value as string;
      this.seen.delete(oldest);
    }
    return count;
  }

  forget(key: string): void {
    this.seen.delete(key);
  }

  get size(): number {
    return this.seen.size;
  }
}

export interface QuarantineOptions {
  fs: FileSystem;
  /** Folder for quarantined segments, e.g. `<store.path>/quarantine`. Created on first use. */
  dir: string;
}

/**
 * A quarantine file being written as its bytes arrive (a segment too large to hold in memory).
 * `finish` makes it durable and returns its path; `abort` deletes what was written.
 */
export interface QuarantineSink {
  readonly path: string;
  write(chunk: Buffer): Promise<void>;
  finish(): Promise<string>;
  abort(): Promise<void>;
}

/** Writes poison segments aside. */
export class Quarantine {
  constructor(
    private readonly opts: QuarantineOptions,
    private readonly now: () => number = Date.now,
  ) {}

  get dir(): string {
    return this.opts.dir;
  }

  /** `<ingester>-<UTC time>-<hash>.segment` in the folder. */
  private name(ingester: string, hash: string): string {
    const who = ingester.replace(/[^A-Za-z0-9.-]+/g, '_');
    const stamp = new Date(this.now()).toISOString().replace(/[:.]/g, '');
    return join(this.opts.dir, `${who}-${stamp}-${hash.slice(0, 12)}.segment`);
  }

  /** Stores `body` durably under a new name; returns its path. */
  async save(ingester: string, fingerprint: string, body: Buffer): Promise<string> {
    const { fs, dir } = this.opts;
    await fs.mkdirAll(dir);
    const path = this.name(ingester, fingerprint.slice(fingerprint.lastIndexOf(' ') + 1));
    const file = await fs.create(path);
    try {
      await file.write(body);
      await file.sync();
    } finally {
      await file.close();
    }
    // The commit that follows deletes the ingester's copy: the name must survive a crash too.
    await fs.syncDir(dir);
    return path;
  }

  /**
   * Opens a quarantine file to be written chunk by chunk (a segment too large to be read into
   * memory). Its name carries the SHA-256 of the bytes, known only at the end: it is written as
   * `<name>.partial` and renamed when finished, so a half-written file never looks complete.
   */
  async open(ingester: string): Promise<QuarantineSink> {
    const { fs, dir } = this.opts;
    await fs.mkdirAll(dir);
    const partial = `${this.name(ingester, randomUUID().slice(0, 8))}.partial`;
    const file: WritableFile = await fs.create(partial);
    const hash: Hash = createHash('sha256');
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await file.close();
    };
    return {
      path: partial,
      write: async (chunk) => {
        hash.update(chunk);
        await file.write(chunk);
      },
      finish: async () => {
        await file.sync();
        await close();
        const path = this.name(ingester, hash.digest('hex'));
        await fs.rename(partial, path);
        // The commit that follows deletes the ingester's copy: the name must survive a crash too.
        await fs.syncDir(dir);
        return path;
      },
      abort: async () => {
        await close().catch(() => {});
        await fs.remove(partial).catch(() => {});
      },
    };
  }
}
