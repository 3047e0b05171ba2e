// Ingest test plumbing: TCP clients that end cleanly, reset, or half-close and wait for a reply;
// a minimal "store" that drains the segment API; record parsing.

import { readdir, readFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { waitFor } from '../helpers/index.ts';

export const RECORD = /^([0-9A-HJKMNP-TV-Z]{26}) (.*)$/s;

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1' }, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Sends `data` and ends the connection cleanly (FIN); resolves once the server closed it too. */
export async function sendLines(port: number, data: string | Buffer): Promise<void> {
  const s = await open(port);
  s.on('error', () => {});
  s.resume();
  await new Promise<void>((resolve) => {
    s.once('close', () => resolve());
    s.end(data);
  });
}

/** Sends `data` then resets the connection (RST), as a crashed client would. */
export async function sendThenReset(port: number, data: string | Buffer): Promise<void> {
  const s = await open(port);
  s.on('error', () => {});
  await new Promise<void>((resolve) => s.write(data, () => resolve()));
  // Let the bytes reach the server before the RST overtakes them.
  await new Promise((r) => setTimeout(r, 150));
  await new Promise<void>((resolve) => {
    s.once('close', () => resolve());
    s.resetAndDestroy();
  });
}

/** An open connection for tests that keep writing. */
export async function openConnection(port: number): Promise<Socket> {
  const s = await open(port);
  s.on('error', () => {});
  s.resume();
  return s;
}

/** Bulk client: sends, half-closes, and resolves with whatever the node answers before closing. */
export async function bulkUpload(
  port: number,
  data: string | Buffer,
): Promise<{ reply: string; socket: Socket; replied: Promise<string> }> {
  const s = await open(port);
  s.on('error', () => {});
  let reply = '';
  s.setEncoding('utf8');
  s.on('data', (d: string) => {
    reply += d;
  });
  const replied = new Promise<string>((resolve) => s.once('close', () => resolve(reply)));
  s.end(data);
  return {
    get reply() {
      return reply;
    },
    socket: s,
    replied,
  };
}

export interface Stats {
  segments: Record<'active' | 'flushed' | 'pending', { count: number; bytes: number }>;
  connections: { fast: number; durable: number; bulk: number };
  written: { records: number; bytes: number };
}

export async function stats(api: string): Promise<Stats> {
  const r = await fetch(`${api}/ingest/stats`);
  if (r.status !== 200) throw new Error(`stats: ${r.status}`);
  return (await r.json()) as Stats;
}

/** Waits until the node has written `records` records in total. */
export async function waitWritten(api: string, records: number, timeoutMs = 15_000): Promise<Stats> {
  return (await waitFor(
    async () => {
      const s = await stats(api);
      return s.written.records >= records ? s : null;
    },
    `${records} records written`,
    timeoutMs,
  )) as Stats;
}

/** Waits until no segment is active (all flushed) and at least `records` were written. */
export async function waitFlushed(api: string, records = 0, timeoutMs = 15_000): Promise<Stats> {
  return (await waitFor(
    async () => {
      const s = await stats(api);
      return s.segments.active.count === 0 && s.written.records >= records ? s : null;
    },
    'active segments flushed',
    timeoutMs,
  )) as Stats;
}

/** Plays the store: claims, reads and commits every flushed segment. Returns their records. */
export async function drain(api: string): Promise<string[]> {
  const out: string[] = [];
  for (;;) {
    const next = await fetch(`${api}/ingest/next`);
    const id = await next.text();
    if (next.status === 404) return out;
    if (next.status !== 200) throw new Error(`next: ${next.status} ${id}`);
    const read = await fetch(`${api}/ingest/read?id=${id}`);
    const body = await read.text();
    if (read.status !== 200) throw new Error(`read: ${read.status} ${body}`);
    const commit = await fetch(`${api}/ingest/commit?id=${id}`, { method: 'POST' });
    if (commit.status !== 200) throw new Error(`commit: ${commit.status} ${await commit.text()}`);
    await commit.text();
    out.push(...splitRecords(body));
  }
}

export function splitRecords(text: string): string[] {
  if (text === '') return [];
  if (!text.endsWith('\n'))
    throw new Error(`segment does not end with a newline: ${JSON.stringify(text.slice(-40))}`);
  return text.slice(0, -1).split('\n');
}

/** `<ULID> <rest>` → [ulid, rest], asserting the format. */
export function parseRecord(line: string): [string, string] {
  const m = RECORD.exec(line);
  if (!m) throw new Error(`malformed record ${JSON.stringify(line.slice(0, 80))}`);
  return [m[1], m[2]];
}

/** Every record in the segment files of `dir` with the given extension. */
export async function recordsOnDisk(dir: string, ext: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(dir)).sort()) {
    if (!name.endsWith(ext)) continue;
    out.push(...splitRecords(await readFile(join(dir, name), 'utf8')));
  }
  return out;
}

export async function segmentFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n !== 'LOCK').sort();
}

/** The value of an unlabelled or labelled sample in a Prometheus text exposition. */
export function metricValue(text: string, sample: string): number {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1));
  }
  return Number.NaN;
}
