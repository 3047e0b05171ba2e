// Network namespaces for tests (ip netns, veth, bridge; needs root): each lab has names unique to
// this run, removes what it created (namespaces, and with them their veths and processes' links)
// when the test ends or the test process exits, and the namespaces a killed earlier run left
// behind are removed before a new one is made.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ROOT } from '../helpers/index.ts';

export const isRoot = process.getuid?.() === 0;
const PREFIX = 'oklogtest';

export function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Namespaces left by an earlier run of a test that was killed (its pid is gone). */
function removeStale(): void {
  let list = '';
  try {
    list = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  } catch {
    return;
  }
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0];
    const m = new RegExp(`^${PREFIX}(\\d+)x[0-9a-f]{4}-[a-z0-9]+$`).exec(name);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // that test is still running
    } catch {}
    killAllIn(name);
    try {
      ip('netns', 'del', name);
    } catch {}
  }
}

/** Processes still running inside `ns` (a namespace's removal does not stop them). */
function killAllIn(ns: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split(/\s+/).filter(Boolean);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {}
    }
  } catch {}
}

export class NetnsLab {
  readonly tag = `${PREFIX}${process.pid}x${randomBytes(2).toString('hex')}`;
  private readonly created: string[] = [];
  private readonly procs: ChildProcess[] = [];
  private readonly onExit = () => this.cleanup();

  constructor() {
    removeStale();
    process.on('exit', this.onExit);
  }

  /** Creates namespace `<tag>-<suffix>` (suffix: lower-case letters and digits) with lo up. */
  add(suffix: string): string {
    const ns = `${this.tag}-${suffix}`;
    ip('netns', 'add', ns);
    this.created.push(ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    return ns;
  }

  /** Runs `node [--import tsx] <args>` inside `ns`, in its own process group, killed at cleanup. */
  spawnNode(ns: string, args: string[], tsx = true): ChildProcess {
    const child = spawn(
      'ip',
      ['netns', 'exec', ns, process.execPath, ...(tsx ? ['--import', 'tsx'] : []), ...args],
      { cwd: ROOT, detached: true, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    this.procs.push(child);
    return child;
  }

  /** Kills every process started here, then removes every namespace (veths go with them). */
  cleanup(): void {
    for (const p of this.procs.splice(0)) {
      try {
        if (p.pid && p.exitCode === null) process.kill(-p.pid, 'SIGKILL');
      } catch {}
    }
    for (const ns of this.created.splice(0).reverse()) {
      killAllIn(ns);
      try {
        ip('netns', 'del', ns);
      } catch {}
    }
    process.off('exit', this.onExit);
  }
}

/** Splits a child's stdout into lines and hands each parsed JSON line to `fn`. */
export function onJsonLines(child: ChildProcess, fn: (v: Record<string, unknown>) => void): void {
  let buf = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        fn(JSON.parse(line));
      } catch {}
      nl = buf.indexOf('\n');
    }
  });
}
