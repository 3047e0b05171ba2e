// OK Log's peer map: `{"<node name>": {"type", "api_addr", "api_port"}}`, exchanged as JSON in the
// push/pull user state so Go OK Log nodes and ours understand each other. Fixed here (§11.2 item
// 7): an entry is only accepted for a member memberlist currently holds live, and is removed when
// that member dies or leaves, so a stale push/pull can never bring a dead member back. Our own
// nodes also put their entry in the memberlist node metadata, so it travels with every alive
// message and peers learn it at once instead of at the next push/pull.
import type { PeerType } from './peers.ts';

export interface PeerEntry {
  type: PeerType;
  api_addr: string;
  api_port: number;
}

const TYPES = new Set(['ingest', 'store', 'ingeststore']);

/** A valid entry, or null. */
export function parsePeerEntry(v: unknown): PeerEntry | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.type !== 'string' || !TYPES.has(o.type)) return null;
  if (typeof o.api_addr !== 'string' || o.api_addr.length > 255) return null;
  if (typeof o.api_port !== 'number' || !Number.isInteger(o.api_port) || o.api_port < 0 || o.api_port > 65535)
    return null;
  return { type: o.type as PeerType, api_addr: o.api_addr, api_port: o.api_port };
}

/** Parses a JSON peer map; invalid entries are skipped. Null when the buffer is not a JSON object. */
export function parsePeerMap(buf: Buffer, maxEntries: number): Map<string, PeerEntry> | null {
  let raw: unknown;
  try {
    raw = JSON.parse(buf.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return null;
  const out = new Map<string, PeerEntry>();
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (out.size >= maxEntries) break;
    const e = parsePeerEntry(v);
    if (e && name.length > 0 && name.length <= 1024) out.set(name, e);
  }
  return out;
}

export function encodePeerEntry(e: PeerEntry): Buffer {
  return Buffer.from(JSON.stringify({ type: e.type, api_addr: e.api_addr, api_port: e.api_port }));
}

export interface PeerMapOptions {
  self: string;
  selfEntry: PeerEntry;
  /** Whether memberlist holds `name` as a live (alive or suspect) member right now. */
  isLive: (name: string) => boolean;
  maxEntries: number;
}

export class PeerMap {
  private readonly entries = new Map<string, PeerEntry>();

  constructor(private readonly o: PeerMapOptions) {
    this.entries.set(o.self, o.selfEntry);
  }

  get(name: string): PeerEntry | undefined {
    return this.entries.get(name);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Sets an entry learned from the member itself (its metadata); ignored unless it is live. */
  set(name: string, e: PeerEntry): boolean {
    if (name === this.o.self) return false;
    if (!this.o.isLive(name)) return false;
    this.entries.set(name, e);
    return true;
  }

  delete(name: string): void {
    if (name !== this.o.self) this.entries.delete(name);
  }

  /**
   * Merges a remote map: entries of live members are taken (union, overwrite per key, as OK Log),
   * entries of members memberlist does not hold live are ignored. Returns how many were ignored.
   */
  merge(remote: Map<string, PeerEntry>): { accepted: number; ignored: number } {
    let accepted = 0;
    let ignored = 0;
    for (const [name, e] of remote) {
      if (name === this.o.self) continue;
      if (this.set(name, e)) accepted++;
      else ignored++;
    }
    return { accepted, ignored };
  }

  /** Drops entries of members no longer live (a safety net behind the leave events). */
  prune(): void {
    for (const name of [...this.entries.keys()])
      if (name !== this.o.self && !this.o.isLive(name)) this.entries.delete(name);
  }

  /** Entries of live members and ourselves, as a plain object (OK Log's JSON shape). */
  toJSON(): Record<string, PeerEntry> {
    const out: Record<string, PeerEntry> = {};
    for (const [name, e] of this.entries) if (name === this.o.self || this.o.isLive(name)) out[name] = e;
    return out;
  }

  encode(): Buffer {
    return Buffer.from(JSON.stringify(this.toJSON()));
  }

  names(): string[] {
    return [...this.entries.keys()];
  }
}
