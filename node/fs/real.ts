// The real filesystem: thin wrappers over node:fs/promises, plus a PID-file lock.
import { createReadStream, constants as fsConstants } from 'node:fs';
import {
  type FileHandle,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  stat,
  unlink,
  utimes,
} from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { LockedError } from '../../shared/errors.ts';
import type { FileInfo, FileSystem, Lock, ReadOptions, WritableFile } from './types.ts';

class RealFile implements WritableFile {
  size = 0;
  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
  ) {}
  async write(chunks: Buffer | readonly Buffer[]): Promise<void> {
    let list = Buffer.isBuffer(chunks) ? [chunks] : [...chunks];
    let total = 0;
    for (const c of list) total += c.length;
    let remaining = total;
    // writev may write short; loop until everything is on its way to the disk.
    while (remaining > 0) {
      const { bytesWritten } = await this.fh.writev(list);
      remaining -= bytesWritten;
      if (remaining > 0) list = dropBytes(list, bytesWritten);
    }
    this.size += total;
  }
  async sync(): Promise<void> {
    await this.fh.datasync();
  }
  async close(): Promise<void> {
    await this.fh.close();
  }
}

function dropBytes(list: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of list) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n > 0 ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}

/** Reads the start time (clock ticks since boot) of a process, to tell a live holder from a reused pid. */
async function processStartTime(pid: number): Promise<string | null> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime), counted after the parenthesised command name.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Creates `path` with `text` unless it exists (O_EXCL); true when this call created it. */
async function createExclusive(path: string, text: string): Promise<boolean> {
  let fh: FileHandle;
  try {
    fh = await open(path, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY, 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return true;
}

/**
 * Who holds a lock file: a live process; nobody any more (a dead pid, a reused pid with another
 * start time, garbage, or no file); or, for an empty file, maybe a holder between its create and
 * its write.
 */
async function holderOf(
  path: string,
): Promise<{ state: 'alive' | 'stale' | 'starting'; text: string | null }> {
  const text = await readFile(path, 'utf8').catch(() => null);
  if (text === null) return { state: 'stale', text };
  const [pidText, start] = text.trim().split(' ');
  const pid = Number(pidText);
  if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
    const liveStart = await processStartTime(pid);
    // Same pid and same start time: the holder is alive (or it is us, twice).
    if (!start || !liveStart || liveStart === start) return { state: 'alive', text };
    return { state: 'stale', text };
  }
  return { state: text === '' ? 'starting' : 'stale', text };
}

function heldLock(path: string, existed: boolean): Lock {
  let released = false;
  return {
    existed,
    release: async () => {
      if (released) throw new Error(`lock ${path} already released`);
      released = true;
      await unlink(path).catch(() => {});
    },
  };
}

export class RealFileSystem implements FileSystem {
  readonly kind = 'real' as const;

  async create(path: string): Promise<WritableFile> {
    const fh = await open(path, 'w');
    return new RealFile(path, fh);
  }
  createReadStream(path: string, options: ReadOptions = {}): Readable {
    return createReadStream(path, {
      start: options.start,
      end: options.end,
      highWaterMark: options.highWaterMark,
    });
  }
  async readFile(path: string): Promise<Buffer> {
    // One read of the whole file (fs.readFile reads in 512 KiB steps, each a thread-pool round
    // trip): segments are read whole by an ingeststore's consumer.
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      const buf = Buffer.allocUnsafe(size);
      let n = 0;
      while (n < size) {
        const { bytesRead } = await fh.read(buf, n, size - n, n);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      // A file that grew meanwhile is read to its end by the general routine.
      if (n === size && (await fh.read(Buffer.allocUnsafe(1), 0, 1, size)).bytesRead > 0)
        return await readFile(path);
      return n === size ? buf : buf.subarray(0, n);
    } finally {
      await fh.close();
    }
  }
  remove(path: string): Promise<void> {
    return unlink(path);
  }
  rename(from: string, to: string): Promise<void> {
    return rename(from, to);
  }
  async exists(path: string): Promise<boolean> {
    try {
      await stat(path);
      return true;
    } catch {
      return false;
    }
  }
  async stat(path: string): Promise<FileInfo> {
    const s = await stat(path);
    return { path, name: basename(path), size: s.size, mtimeMs: s.mtimeMs };
  }
  async mkdirAll(path: string): Promise<void> {
    await mkdir(path, { recursive: true, mode: 0o755 });
  }
  chtimes(path: string, atime: Date, mtime: Date): Promise<void> {
    return utimes(path, atime, mtime);
  }
  async list(root: string): Promise<FileInfo[]> {
    const out: FileInfo[] = [];
    const walk = async (dir: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const e of entries) {
        const p = join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else if (e.isFile()) {
          try {
            const s = await stat(p);
            out.push({ path: p, name: e.name, size: s.size, mtimeMs: s.mtimeMs });
          } catch {
            // Renamed or removed between readdir and stat: not there any more.
          }
        }
      }
    };
    await walk(root);
    return out;
  }

  /**
   * A PID lock file created with O_EXCL. Node has no flock(2); instead the file names its holder
   * (pid and process start time), so a lock left by a killed process is recognised as stale and
   * taken over, while a live holder makes a second process fail at once.
   *
   * Taking over a stale lock is itself done under a second lock (`<path>.takeover`), re-reading
   * the lock once it is held: two processes that start together after a crash may both judge the
   * old lock stale, and without it the later one would delete the lock the earlier one had just
   * made, and both would run.
   */
  async lock(path: string): Promise<Lock> {
    await this.mkdirAll(dirname(path));
    const me = `${process.pid} ${(await processStartTime(process.pid)) ?? ''}\n`;
    let existed = false;
    let waited = false;
    let waitedTakeover = false;
    for (let attempt = 0; attempt < 20; attempt++) {
      if (await createExclusive(path, me)) return heldLock(path, existed);
      existed = true;
      const holder = await holderOf(path);
      if (holder.state === 'alive') throw new LockedError(path);
      if (holder.state === 'starting' && !waited) {
        waited = true;
        await sleep(50); // maybe between its create and its write: judge it again, then as stale
        continue;
      }
      // Stale (or gone): take it over under the takeover lock.
      const takeover = `${path}.takeover`;
      if (!(await createExclusive(takeover, me))) {
        const breaker = await holderOf(takeover);
        if (breaker.state === 'stale' || (breaker.state === 'starting' && waitedTakeover)) {
          await unlink(takeover).catch(() => {}); // its taker died
        } else {
          waitedTakeover ||= breaker.state === 'starting';
          await sleep(20); // another process is taking over: see what it made of it
        }
        continue;
      }
      try {
        // Held: nobody else can be between judging and replacing. Is it still the stale lock?
        if ((await readFile(path, 'utf8').catch(() => null)) === holder.text)
          await unlink(path).catch(() => {});
      } finally {
        await unlink(takeover).catch(() => {});
      }
    }
    throw new LockedError(path);
  }

  async syncDir(path: string): Promise<void> {
    const fh = await open(path, 'r');
    try {
      await fh.sync();
    } catch {
      // Some filesystems refuse fsync on directories; the rename itself is still atomic.
    } finally {
      await fh.close();
    }
  }
}
