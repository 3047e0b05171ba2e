// The filesystem seen by the ingest and store logs (reference §6), so the same log code runs on
// disk, in memory (tests) or against nothing (benchmarks).
import type { Readable } from 'node:stream';

export interface FileInfo {
  /** Full path as given to the filesystem (root joined with the relative name). */
  path: string;
  /** Base name. */
  name: string;
  size: number;
  mtimeMs: number;
}

export interface WritableFile {
  readonly path: string;
  /** Bytes in the file (written through this handle plus any initial content). */
  readonly size: number;
  /** Writes all chunks with as few syscalls as possible (writev). */
  write(chunks: Buffer | readonly Buffer[]): Promise<void>;
  /** fsync (fdatasync) the file's data. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface ReadOptions {
  start?: number;
  /** Inclusive end offset, as fs.createReadStream. */
  end?: number;
  highWaterMark?: number;
}

export interface Lock {
  /** True when a lock file was already there (a stale lock left by a crash). */
  readonly existed: boolean;
  release(): Promise<void>;
}

export interface FileSystem {
  readonly kind: 'real' | 'virtual' | 'nop';
  /** Creates (or truncates) a file for writing. */
  create(path: string): Promise<WritableFile>;
  /** Streams a file's bytes. Reads never change the file. */
  createReadStream(path: string, options?: ReadOptions): Readable;
  readFile(path: string): Promise<Buffer>;
  remove(path: string): Promise<void>;
  /** Atomic rename that overwrites the target. */
  rename(from: string, to: string): Promise<void>;
  exists(path: string): Promise<boolean>;
  stat(path: string): Promise<FileInfo>;
  mkdirAll(path: string): Promise<void>;
  chtimes(path: string, atime: Date, mtime: Date): Promise<void>;
  /** Every file below `root` (recursive), lexical order by path. */
  list(root: string): Promise<FileInfo[]>;
  /** Takes the data-directory lock at `path`; fails at once if a live process holds it. */
  lock(path: string): Promise<Lock>;
  /** fsync a directory so renames in it are durable (no-op where meaningless). */
  syncDir(path: string): Promise<void>;
}
