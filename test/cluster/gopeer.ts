// Builds and drives test/go/mlpeer, a hashicorp/memberlist peer (Debian's golang-go and
// golang-github-hashicorp-memberlist-dev). The binary is cached in the OS temp dir, keyed by the
// source's hash. Without Go the build fails and so does the test: CI installs it.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from '../helpers/index.ts';

const run = promisify(execFile);
const SOURCE = join(ROOT, 'test/go/mlpeer/main.go');
export const GOPATH = '/usr/share/gocode';

/** Path of the built mlpeer binary (built once per source version). */
export async function buildMlpeer(): Promise<string> {
  const src = readFileSync(SOURCE);
  const hash = createHash('sha256').update(src).digest('hex').slice(0, 16);
  const dir = join(tmpdir(), `oklog-mlpeer-${hash}`);
  const bin = join(dir, 'mlpeer');
  if (existsSync(bin)) return bin;
  if (!existsSync(join(GOPATH, 'src/github.com/hashicorp/memberlist')))
    throw new Error(
      'hashicorp/memberlist sources missing: install golang-go and golang-github-hashicorp-memberlist-dev (bash .ci/setup-system.sh)',
    );
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `mlpeer.${process.pid}.tmp`);
  try {
    await run('go', ['build', '-o', tmp, SOURCE], {
      cwd: join(ROOT, 'test/go/mlpeer'),
      env: {
        ...process.env,
        GOPATH,
        GO111MODULE: 'off',
        GOFLAGS: '',
        GOCACHE: join(tmpdir(), 'oklog-go-cache'),
      },
      timeout: 180_000,
    });
    renameSync(tmp, bin);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new Error(
      `building the Go memberlist peer failed (is golang-go installed?): ${(err as Error).message}`,
    );
  }
  return bin;
}

export type GoEvent = Record<string, unknown> & { ev: string };

export interface GoPeerOptions {
  name: string;
  bind?: string;
  join?: string[];
  key?: string;
  type?: string;
  apiPort?: number;
  /** Fast timings for tests (ms). */
  probeIntervalMs?: number;
}

export class GoPeer {
  readonly events: GoEvent[] = [];
  private readonly child: ChildProcess;
  private buf = '';
  private stderr = '';
  private waiters: Array<() => void> = [];
  exited = false;
  port = 0;

  constructor(bin: string, o: GoPeerOptions) {
    const probe = o.probeIntervalMs ?? 200;
    const args = [
      '-name',
      o.name,
      '-bind',
      o.bind ?? '127.0.0.1',
      '-port',
      '0',
      '-type',
      o.type ?? 'store',
      '-api-addr',
      o.bind ?? '127.0.0.1',
      '-api-port',
      String(o.apiPort ?? 7650),
      '-probe-interval',
      `${probe}ms`,
      '-probe-timeout',
      `${Math.floor(probe / 2)}ms`,
      '-gossip-interval',
      '50ms',
      '-pushpull-interval',
      '2s',
      '-suspicion-mult',
      '2',
    ];
    if (o.join?.length) args.push('-join', o.join.join(','));
    if (o.key) args.push('-key', o.key);
    this.child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    this.child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      let nl = this.buf.indexOf('\n');
      while (nl >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        try {
          const ev = JSON.parse(line) as GoEvent;
          if (ev.ev === 'ready') this.port = Number(ev.port);
          this.events.push(ev);
        } catch {
          // not JSON: ignore
        }
        nl = this.buf.indexOf('\n');
      }
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-8000);
    });
    this.child.on('exit', () => {
      this.exited = true;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
    this.child.stdin?.on('error', () => {});
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get addr(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Waits for an event matching `pred` (already seen ones count), or throws after `ms`. */
  async waitFor(pred: (e: GoEvent) => boolean, ms: number, what: string, from = 0): Promise<GoEvent> {
    const deadline = Date.now() + ms;
    for (;;) {
      const e = this.events.slice(from).find(pred);
      if (e) return e;
      if (this.exited) throw new Error(`Go peer exited while waiting for ${what}: ${this.stderr}`);
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(
          `timed out waiting for Go peer: ${what}; events: ${JSON.stringify(this.events.slice(-10))}`,
        );
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 100));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async ready(): Promise<this> {
    await this.waitFor((e) => e.ev === 'ready', 10_000, 'ready');
    return this;
  }

  send(line: string): void {
    this.child.stdin?.write(`${line}\n`);
  }

  /** Asks for and returns a fresh `members` event. */
  async members(): Promise<{ members: Array<{ name: string }>; peers: Record<string, unknown>; n: number }> {
    const from = this.events.length;
    this.send('members');
    const e = await this.waitFor((x) => x.ev === 'members', 5000, 'members', from);
    return {
      members: (e.members as Array<{ name: string }>) ?? [],
      peers: e.peers as Record<string, unknown>,
      n: Number(e.n),
    };
  }

  async request(line: string, ev: string): Promise<GoEvent> {
    const from = this.events.length;
    this.send(line);
    return this.waitFor((x) => x.ev === ev, 10_000, line, from);
  }

  /** kill -9 of the process group. */
  kill9(): void {
    if (this.exited) return;
    try {
      process.kill(-this.pid, 'SIGKILL');
    } catch {}
  }
}
