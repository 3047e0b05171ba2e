// A filesystem that keeps nothing: every operation succeeds, walks find nothing (reference §6.4).
// Ingested data is discarded; useful to benchmark the listeners alone.
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import type { FileInfo, FileSystem, Lock, WritableFile } from './types.ts';

export class NopFileSystem implements FileSystem {
  readonly kind = 'nop' as const;
  async create(path: string): Promise<WritableFile> {
    let size = 0;
    return {
      path,
      get size() {
        return size;
      },
      async write(chunks) {
        for (const c of Buffer.isBuffer(chunks) ? [chunks] : chunks) size += c.length;
      },
      async sync() {},
      async close() {},
    };
  }
  createReadStream(): Readable {
    return Readable.from([]);
  }
  async readFile(): Promise<Buffer> {
    return Buffer.alloc(0);
  }
  async remove(): Promise<void> {}
  async rename(): Promise<void> {}
  async exists(): Promise<boolean> {
    return false;
  }
  async stat(path: string): Promise<FileInfo> {
    return { path, name: basename(path), size: 0, mtimeMs: 0 };
  }
  async mkdirAll(): Promise<void> {}
  async chtimes(): Promise<void> {}
  async list(): Promise<FileInfo[]> {
    return [];
  }
  async lock(): Promise<Lock> {
    return { existed: false, release: async () => {} };
  }
  async syncDir(): Promise<void> {}
}
