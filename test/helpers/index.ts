// Shared test plumbing: free ports, temp dirs, real node processes that are always cleaned up.
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '../..');
/** tsx's loader by absolute URL, so a child started in another cwd still finds it. */
const TSX = import.meta.resolve('tsx');

/**
 * Ports handed out by freePort come from below the kernel's ephemeral range: a port from inside it
 * can be taken by any outgoing connection (of another test running in parallel, say) between a
 * node's kill and its restart on the same ports, which made restart tests fail with EADDRINUSE.
 */
const PORT_RANGE = (() => {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  } catch {}
  return low > 12_000 ? { from: 10_000, to: low - 1 } : { from: 61_000, to: 65_000 };
})();
let nextPort = PORT_RANGE.from + Math.floor(Math.random() * (PORT_RANGE.to - PORT_RANGE.from));

/** Whether `port` can be bound on `host` for TCP and UDP right now (gossip uses both). */
async function bindable(port: number, host: string): Promise<boolean> {
  const tcp = await new Promise<boolean>((res) => {
    const s = createServer();
    s.unref();
    s.once('error', () => res(false));
    s.listen(port, host, () => s.close(() => res(true)));
  });
  if (!tcp) return false;
  return await new Promise<boolean>((res) => {
    const u = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    u.unref();
    u.once('error', () => {
      u.close();
      res(false);
    });
    u.bind(port, host, () => u.close(() => res(true)));
  });
}

/** A TCP (and UDP) port free on `host` right now, outside the ephemeral range. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let tries = 0; tries < 1000; tries++) {
    const port = nextPort;
    nextPort = nextPort >= PORT_RANGE.to ? PORT_RANGE.from : nextPort + 1;
    if (await bindable(port, host)) return port;
  }
  throw new Error(`no free port on ${host} in ${PORT_RANGE.from}-${PORT_RANGE.to}`);
}

/** Sends `data` on one TCP connection to 127.0.0.1:`port` (one writer: ULIDs follow its order) and closes it. */
export function sendTcp(port: number, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1' }, () => s.end(data));
    s.on('error', reject);
    s.resume();
    s.on('close', () => resolve());
  });
}

export async function tempDir(
  prefix = 'oklog-test-',
): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function waitFor<T>(
  fn: () => Promise<T> | T,
  what: string,
  timeoutMs = 15_000,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ''}`);
}

export interface NodePorts {
  api: number;
  fast: number;
  durable: number;
  bulk: number;
  cluster: number;
}

export async function nodePorts(): Promise<NodePorts> {
  return {
    api: await freePort(),
    fast: await freePort(),
    durable: await freePort(),
    bulk: await freePort(),
    cluster: await freePort(),
  };
}

/** Flags that put every listener of a node on loopback at the given ports. */
export function portFlags(p: NodePorts, host = '127.0.0.1'): string[] {
  return [
    '-api',
    `tcp://${host}:${p.api}`,
    '-ingest.fast',
    `tcp://${host}:${p.fast}`,
    '-ingest.durable',
    `tcp://${host}:${p.durable}`,
    '-ingest.bulk',
    `tcp://${host}:${p.bulk}`,
    '-cluster',
    `tcp://${host}:${p.cluster}`,
  ];
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) {
    try {
      if (p.pid) process.kill(-p.pid, 'SIGKILL');
    } catch {}
  }
});

export interface Proc {
  child: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): Promise<number | string>;
}

/**
 * Runs `node --import tsx <script> ...args` directly (no npx wrapper), in its own process group,
 * so killing it kills the real node and nothing is left behind.
 */
export function spawnTs(
  script: string,
  args: string[],
  options: {
    cwd?: string;
    env?: NodeJS.ProcessEnv;
    stdin?: 'pipe' | 'ignore' | number;
    nodeArgs?: string[];
  } = {},
): Proc {
  // A .js script is a launcher (cli/oklog.js: the cached bundle), which needs no loader.
  const loader = script.endsWith('.ts') ? ['--import', TSX] : [];
  const nodeArgs = options.nodeArgs ?? [];
  const child = spawn(process.execPath, [...nodeArgs, ...loader, join(ROOT, script), ...args], {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, ...options.env },
    stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'],
    detached: true,
  });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<number | string>((res) => {
    child.on('exit', (code, sig) => {
      live.delete(child);
      res(code ?? sig ?? -1);
    });
  });
  return {
    child,
    pid: child.pid ?? -1,
    stdout: () => out,
    stderr: () => err,
    exited,
    async kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-(child.pid ?? 0), signal);
        } catch {}
      }
      return exited;
    },
  };
}

/** portFlags without the ingest listeners for a store node (which has none). */
function nodeFlags(mode: string, ports: NodePorts): string[] {
  const flags = portFlags(ports);
  if (mode !== 'store') return flags;
  return flags.filter((f, i) => !f.startsWith('-ingest.') && !flags[i - 1]?.startsWith('-ingest.'));
}

/** Starts `oklog <mode>` with loopback ports and waits until /health answers. */
export async function startOklog(
  mode: 'ingest' | 'store' | 'ingeststore',
  args: string[],
  options: {
    cwd?: string;
    ports?: NodePorts;
    env?: NodeJS.ProcessEnv;
    nodeArgs?: string[];
    /** Start through the `oklog` command (cli/oklog.js) as users do, instead of tsx. */
    launcher?: boolean;
  } = {},
) {
  const ports = options.ports ?? (await nodePorts());
  const proc = spawnTs(
    options.launcher ? 'cli/oklog.js' : 'cli/oklog.ts',
    [mode, ...nodeFlags(mode, ports), ...args],
    {
      cwd: options.cwd,
      env: options.env,
      nodeArgs: options.nodeArgs,
    },
  );
  const api = `http://127.0.0.1:${ports.api}`;
  try {
    await waitFor(
      async () => {
        if (proc.child.exitCode !== null) throw new Error(`node exited early: ${proc.stderr()}`);
        const r = await fetch(`${api}/health`);
        return r.ok;
      },
      `oklog ${mode} /health`,
      30_000,
    );
  } catch (err) {
    await proc.kill('SIGKILL');
    throw new Error(`${(err as Error).message}\n--- stderr ---\n${proc.stderr()}`);
  }
  return { proc, ports, api };
}

/**
 * `oklog ingeststore` with its data in `<dir>/ingest` and `<dir>/store`, ingest segments flushed
 * after `flushAge` and store segments closed after `targetAge` (short ages: records are queryable soon).
 */
export function startIngeststore(
  dir: string,
  flushAge: string,
  targetAge: string,
  options: Parameters<typeof startOklog>[2] = {},
) {
  const args = ['-ingest.path', join(dir, 'ingest'), '-store.path', join(dir, 'store')];
  args.push('-ingest.segment-flush-age', flushAge, '-store.segment-target-age', targetAge);
  return startOklog('ingeststore', args, options);
}

/** Waits until the node at `api` knows itself as a store peer (gossip state), which fan-outs need. */
export async function untilStorePeer(api: string, timeoutMs = 15_000): Promise<void> {
  const epoch = new Date(0).toISOString();
  await waitFor(
    async () =>
      (await fetch(`${api}/store/query?from=${epoch}&to=${epoch}`, { method: 'HEAD' })).status === 200,
    'store peer known',
    timeoutMs,
  );
}

/** Current and peak resident memory of process `pid`, in bytes (VmRSS, VmHWM of /proc/<pid>/status). */
export async function memoryOf(pid: number): Promise<{ rss: number; hwm: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  const bytes = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0) * 1024;
  return { rss: bytes('VmRSS'), hwm: bytes('VmHWM') };
}

/**
 * Watches the resident memory of process `pid`: `before` is read at once, then VmHWM every
 * `everyMs`; `peak()` is the highest VmHWM seen so far (at least `before.hwm`), `stop()` ends it.
 */
export async function watchMemory(pid: number, everyMs: number) {
  const before = await memoryOf(pid);
  let peak = before.hwm;
  const timer = setInterval(() => {
    memoryOf(pid).then(
      (m) => {
        peak = Math.max(peak, m.hwm);
      },
      () => {},
    );
  }, everyMs);
  return { before, peak: () => peak, stop: () => clearInterval(timer) };
}
