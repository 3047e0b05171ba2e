// Shared by the infra tests: a throwaway release tarball, free ports, command lookup.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const REPO = resolve(import.meta.dirname, '..', '..');

/** A temp dir holding a stand-in release tarball (the template only hashes it). */
export function fakeRelease(): { dir: string; tarball: string } {
  const dir = mkdtempSync(join(tmpdir(), 'oklog-infra-'));
  const tarball = join(dir, 'oklog-0.0.0-test.tgz');
  writeFileSync(tarball, 'not a real tarball; synthesis only hashes it\n');
  return { dir, tarball };
}

/** True if `cmd` is on PATH. */
export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** `n` distinct free TCP ports on 127.0.0.1 (held open until all are found). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = [];
  const ports: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = createServer();
    await new Promise<void>((res, rej) => {
      s.once('error', rej);
      s.listen(0, '127.0.0.1', () => res());
    });
    servers.push(s);
    ports.push((s.address() as { port: number }).port);
  }
  await Promise.all(servers.map((s) => new Promise((res) => s.close(res))));
  return ports;
}
