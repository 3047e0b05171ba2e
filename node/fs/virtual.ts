// In-memory filesystem for tests. Unlike OK Log's (reference §6.3, §11.2 item 21) reads are not
// destructive: every read sees the whole file.
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { LockedError, NotFoundError } from '../../shared/errors.ts';
import type { FileInfo, FileSystem, Lock, ReadOptions, WritableFile } from './types.ts';

interface Entry {
  chunks: Buffer[];
  size: number;
  mtimeMs: number;
}

function notExist(path: string): NotFoundError {
  const err = new NotFoundError(`${path}: file does not exist`, { path });
  (err as unknown as { errno: string }).errno = 'ENOENT';
  return err;
}

export class VirtualFileSystem implements FileSystem {
  readonly kind = 'virtual' as const;
  private readonly files = new Map<string, Entry>();
  constructor(private readonly now: () => number = Date.now) {}

  private get(path: string): Entry {
    const e = this.files.get(path);
    if (!e) throw notExist(path);
    return e;
  }

  async create(path: string): Promise<WritableFile> {
    const entry: Entry = { chunks: [], size: 0, mtimeMs: this.now() };
    this.files.set(path, entry);
    const fs = this;
    let written = 0;
    return {
      path,
      get size() {
        return written;
      },
      async write(chunks) {
        const list = Buffer.isBuffer(chunks) ? [chunks] : chunks;
        for (const c of list) {
          const copy = Buffer.from(c);
          entry.chunks.push(copy);
          entry.size += copy.length;
          written += copy.length;
        }
        entry.mtimeMs = fs.now();
      },
      async sync() {},
      async close() {},
    };
  }

  createReadStream(path: string, options: ReadOptions = {}): Readable {
    const entry = this.files.get(path);
    if (!entry) {
      const r = new Readable({ read() {} });
      process.nextTick(() => r.destroy(notExist(path)));
      return r;
    }
    const all = Buffer.concat(entry.chunks);
    const start = options.start ?? 0;
    const end = options.end === undefined ? all.length : options.end + 1;
    return Readable.from([all.subarray(start, end)], { objectMode: false });
  }

  async readFile(path: string): Promise<Buffer> {
    return Buffer.concat(this.get(path).chunks);
  }
  async remove(path: string): Promise<void> {
    this.get(path);
    this.files.delete(path);
  }
  async rename(from: string, to: string): Promise<void> {
    const e = this.get(from);
    this.files.delete(from);
    this.files.set(to, e);
  }
  async exists(path: string): Promise<boolean> {
    return this.files.has(path);
  }
  async stat(path: string): Promise<FileInfo> {
    const e = this.get(path);
    return { path, name: basename(path), size: e.size, mtimeMs: e.mtimeMs };
  }
  async mkdirAll(): Promise<void> {}
  async chtimes(path: string, _atime: Date, mtime: Date): Promise<void> {
    this.get(path).mtimeMs = mtime.getTime();
  }
  async list(root: string): Promise<FileInfo[]> {
    const prefix = root.endsWith('/') ? root : `${root}/`;
    return [...this.files.entries()]
      .filter(([p]) => p.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([p, e]) => ({ path: p, name: basename(p), size: e.size, mtimeMs: e.mtimeMs }));
  }
  async lock(path: string): Promise<Lock> {
    const existing = this.files.get(path);
    if (existing && existing.size > 0) throw new LockedError(path);
    const f = await this.create(path);
    await f.write(Buffer.from('locked!'));
    let released = false;
    return {
      existed: existing !== undefined,
      release: async () => {
        if (released) throw notExist(path);
        released = true;
        this.files.delete(path);
      },
    };
  }
  async syncDir(): Promise<void> {}
}
