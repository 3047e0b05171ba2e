// The resend window of fast/durable TCP forwarding: the writes the kernel accepted that the
// ingester may not have read yet. Those protocols send nothing back, so what sits in our send
// buffer and the ingester's receive buffer when a connection dies is lost unless we send it again.
//
// An entry leaves the window only when it is known (or safely assumed) to have been read:
//  - bytes: once at least `maxBytes` newer bytes were written after it. With `maxBytes` at least
//    what the two kernels can buffer (`kernelBufferBytes`), anything older has left both buffers,
//    so has been read by the ingester: this bound loses nothing.
//  - age: once older than `maxAgeMs`, but only if no write was backpressured since it was written
//    ("pinned" otherwise). A backpressured write means the kernel buffers are full, i.e. the
//    ingester is not keeping up and everything still in the window may be unread, however old;
//    such entries leave only by the byte bound. (Age alone lost records under backpressure: a
//    slow ingester had megabytes unread for longer than the age.) Age exists because a trickle
//    of records would otherwise keep hours of them in the window, all sent twice after every
//    ingester restart. Its blind spot, documented: an ingester that stops reading without the
//    buffers filling (a trickle), stays stopped longer than the age, and then dies.
//  - count: never. Too many small entries are coalesced instead (one copy), to bound the objects.
// At end of input the whole window is pinned: it stays until the ingester confirms by closing.
import { readFileSync } from 'node:fs';

export interface WindowEntry {
  parts: Buffer[];
  bytes: number;
  records: number;
  /** Already sent again once from a window (it is not re-sent a second time). */
  resent: boolean;
  /** performance.now() when the kernel accepted it. */
  at: number;
}

export interface WindowOptions {
  maxBytes: number;
  /** 0: no age limit (bytes only). */
  maxAgeMs: number;
  /** Coalesce when more entries than this are held. */
  maxEntries?: number;
}

/** Coalesced entries are made about this large (larger entries are left alone). */
const COALESCE_BYTES = 64 * 1024;
const DEFAULT_MAX_ENTRIES = 8192;

export class ResendWindow {
  private entries: WindowEntry[] = [];
  /** The first `pinned` entries may not expire by age (written before a backpressured write). */
  private pinned = 0;
  bytes = 0;
  records = 0;
  private readonly maxEntries: number;

  constructor(private readonly o: WindowOptions) {
    this.maxEntries = Math.max(2, o.maxEntries ?? DEFAULT_MAX_ENTRIES);
  }

  get enabled(): boolean {
    return this.o.maxBytes > 0;
  }

  get size(): number {
    return this.entries.length;
  }

  get pinnedEntries(): number {
    return this.pinned;
  }

  /**
   * Remembers a write the kernel accepted at `now`. `pressured`: it had to wait for room in the
   * send buffer, so everything before it (and it) may still be unread.
   */
  add(e: Omit<WindowEntry, 'at'>, now: number, pressured: boolean): void {
    if (!this.enabled) return;
    this.entries.push({ ...e, at: now });
    this.bytes += e.bytes;
    this.records += e.records;
    if (pressured) this.pinned = this.entries.length;
    this.trim(now);
    if (this.entries.length > this.maxEntries) this.coalesce();
  }

  /** Nothing in the window may expire by age any more (end of input: we wait for proof). */
  pinAll(): void {
    this.pinned = this.entries.length;
  }

  /** Drops what is known or assumed to have been read (see the file comment). */
  trim(now: number): void {
    const { maxBytes, maxAgeMs } = this.o;
    while (this.entries.length > 1) {
      const first = this.entries[0];
      const byBytes = this.bytes - first.bytes >= maxBytes;
      const byAge = maxAgeMs > 0 && this.pinned === 0 && now - first.at > maxAgeMs;
      if (!byBytes && !byAge) break;
      this.shift();
    }
    // The last entry alone can expire by age too (an idle connection).
    if (this.entries.length === 1 && maxAgeMs > 0 && this.pinned === 0 && now - this.entries[0].at > maxAgeMs)
      this.shift();
  }

  /**
   * After a lost connection: what to send again (marked re-sent, oldest first) and how many
   * records are not sent again because they already were once. Empties the window.
   */
  drain(now: number): { again: WindowEntry[]; skippedRecords: number } {
    this.trim(now);
    const again: WindowEntry[] = [];
    let skippedRecords = 0;
    for (const e of this.entries) {
      if (e.resent) skippedRecords += e.records;
      else again.push({ ...e, resent: true });
    }
    this.clear();
    return { again, skippedRecords };
  }

  clear(): void {
    this.entries = [];
    this.pinned = 0;
    this.bytes = 0;
    this.records = 0;
  }

  private shift(): void {
    const e = this.entries.shift()!;
    this.bytes -= e.bytes;
    this.records -= e.records;
    if (this.pinned > 0) this.pinned--;
  }

  /**
   * Joins runs of small neighbouring entries (same `resent` flag) into entries of about 64 KiB.
   * A merged entry is pinned if any part was and takes the newest time, so nothing leaves
   * earlier than it would have.
   */
  private coalesce(): void {
    const out: WindowEntry[] = [];
    let pinnedOut = 0;
    let run: WindowEntry[] = [];
    let runBytes = 0;
    let runPinned = false;
    const flush = () => {
      if (run.length === 0) return;
      const merged: WindowEntry =
        run.length === 1
          ? run[0]
          : {
              parts: [
                Buffer.concat(
                  run.flatMap((r) => r.parts),
                  runBytes,
                ),
              ],
              bytes: runBytes,
              records: run.reduce((n, r) => n + r.records, 0),
              resent: run[0].resent,
              at: run[run.length - 1].at,
            };
      out.push(merged);
      if (runPinned) pinnedOut = out.length;
      run = [];
      runBytes = 0;
      runPinned = false;
    };
    this.entries.forEach((e, i) => {
      const big = e.bytes >= COALESCE_BYTES;
      if (run.length > 0 && (big || run[0].resent !== e.resent || runBytes + e.bytes > COALESCE_BYTES))
        flush();
      run.push(e);
      runBytes += e.bytes;
      if (i < this.pinned) runPinned = true;
      if (big) flush();
    });
    flush();
    this.entries = out;
    this.pinned = pinnedOut;
  }
}

const MiB = 1024 * 1024;

/** The third (maximum) value of a `min default max` sysctl, or 0 if unreadable. */
function sysctlMax(path: string): number {
  try {
    const v = readFileSync(path, 'utf8').trim().split(/\s+/).map(Number);
    const max = v[v.length - 1];
    return Number.isFinite(max) && max > 0 ? max : 0;
  } catch {
    return 0;
  }
}

/**
 * The most record bytes that can sit unread between our write and the ingester's read: our send
 * buffer plus its receive buffer, at their autotuning maximums (Linux `tcp_wmem` / `tcp_rmem`;
 * the ingester's host is assumed to be configured like ours), plus 1 MiB the ingester may have
 * read but not yet written (its per-connection queue). Elsewhere (no /proc) a generous guess.
 */
export function kernelBufferBytes(): number {
  const w = sysctlMax('/proc/sys/net/ipv4/tcp_wmem');
  const r = sysctlMax('/proc/sys/net/ipv4/tcp_rmem');
  if (w === 0 || r === 0) return 16 * MiB;
  return w + r + MiB;
}

/** `-resend-window auto`: at least 16 MiB, at least what the kernels can hold, at most 256 MiB. */
export function autoWindowBytes(kernel = kernelBufferBytes()): number {
  return Math.min(256 * MiB, Math.max(16 * MiB, kernel));
}
