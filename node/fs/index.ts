import { InvalidArgumentError } from '../../shared/errors.ts';
import { NopFileSystem } from './nop.ts';
import { RealFileSystem } from './real.ts';
import type { FileSystem } from './types.ts';
import { VirtualFileSystem } from './virtual.ts';

export type { FileInfo, FileSystem, Lock, ReadOptions, WritableFile } from './types.ts';
export { NopFileSystem, RealFileSystem, VirtualFileSystem };

/** `-filesystem real|virtual|nop` (case-insensitive). */
export function createFileSystem(kind: string): FileSystem {
  switch (kind.toLowerCase()) {
    case 'real':
      return new RealFileSystem();
    case 'virtual':
      return new VirtualFileSystem();
    case 'nop':
      return new NopFileSystem();
    default:
      throw new InvalidArgumentError(`invalid -filesystem ${JSON.stringify(kind)}`, { kind });
  }
}
