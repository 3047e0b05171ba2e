// Test doubles for the command-line tools: a TCP sink standing in for an ingester's fast port,
// and a tiny HTTP server standing in for a store or an ingester API.
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { freePort, type Proc, sleep, spawnTs, waitFor } from '../helpers/index.ts';

/**
 * Records every byte received, per connection, and can stall, read slowly, drop or restart. Like
 * an ingester it closes its side once it has read a client's EOF.
 */
export class TcpSink {
  /** Bytes of each connection, in accept order. */
  readonly connections: Buffer[][] = [];
  /** Connections whose EOF (FIN) was read. */
  eofs = 0;
  private server: NetServer | null = null;
  private sockets = new Set<Socket>();
  private paused = false;
  /** Bytes per second each connection reads at (0: as fast as it can). */
  private rate = 0;

  private constructor(
    readonly port: number,
    readonly host: string,
  ) {}

  static async start(port?: number, host = '127.0.0.1'): Promise<TcpSink> {
    const sink = new TcpSink(port ?? (await freePort(host)), host);
    await sink.listen();
    return sink;
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  listen(): Promise<void> {
    const server = createServer((sock) => {
      const parts: Buffer[] = [];
      this.connections.push(parts);
      this.sockets.add(sock);
      sock.on('data', (d) => {
        parts.push(d);
        // Slow reader: after each chunk, stop reading for as long as the rate says it took.
        if (this.rate > 0 && !this.paused) {
          sock.pause();
          setTimeout(() => !this.paused && sock.resume(), (d.length / this.rate) * 1000);
        }
      });
      sock.on('end', () => this.eofs++);
      sock.on('error', () => {});
      sock.on('close', () => this.sockets.delete(sock));
      if (this.paused) sock.pause();
    });
    this.server = server;
    return new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(this.port, this.host, () => res());
    });
  }

  /** Reads at most `bytesPerSecond` per connection (0: full speed again). */
  throttle(bytesPerSecond: number): void {
    this.rate = bytesPerSecond;
  }

  /** Stops reading (the kernel buffers fill, then the sender's writes block). */
  pause(): void {
    this.paused = true;
    for (const s of this.sockets) s.pause();
  }

  resume(): void {
    this.paused = false;
    for (const s of this.sockets) s.resume();
  }

  /** Kills every connection (RST, unread data lost) and stops listening. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = null;
  }

  get bytes(): number {
    let n = 0;
    for (const c of this.connections) for (const p of c) n += p.length;
    return n;
  }

  /** Complete lines of every connection, in order (a trailing partial line is dropped, as the
   *  ingester discards data without a newline at EOF). */
  lines(): string[] {
    const out: string[] = [];
    for (const c of this.connections) {
      const text = Buffer.concat(c).toString('latin1');
      const parts = text.split('\n');
      parts.pop();
      for (const l of parts) out.push(l);
    }
    return out;
  }

  raw(): Buffer {
    return Buffer.concat(this.connections.flat());
  }
}

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

/** An HTTP server on a free loopback port whose behaviour the test sets per request. */
export class FakeHttp {
  readonly requests: { method: string; url: string; body: Buffer }[] = [];
  handler: Handler = (_req, res) => res.writeHead(404).end();
  private constructor(
    readonly server: Server,
    readonly port: number,
  ) {}

  static async start(): Promise<FakeHttp> {
    const port = await freePort();
    let self: FakeHttp | null = null;
    const server = createHttpServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (d) => parts.push(d));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        self!.requests.push({ method: req.method ?? '', url: req.url ?? '', body });
        self!.handler(req, res, body);
      });
    });
    self = new FakeHttp(server, port);
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
    return self;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export interface RunResult {
  code: number | string;
  stdout: string;
  stderr: string;
}

/** Runs a CLI entry to completion (killed after `timeoutMs`), feeding `input` on stdin. */
export async function run(
  script: string,
  args: string[],
  options: { input?: Buffer | string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  const p = spawnTs(script, args, { stdin: 'pipe', env: options.env });
  p.child.stdin?.on('error', () => {});
  p.child.stdin?.end(options.input ?? '');
  const timer = setTimeout(() => p.kill('SIGKILL'), options.timeoutMs ?? 30_000);
  const code = await p.exited;
  clearTimeout(timer);
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

/** Starts `oklog forward` with a stdin pipe the test writes to. */
export function startForward(args: string[]): Proc {
  const p = spawnTs('cli/oklog.ts', ['forward', ...args], { stdin: 'pipe' });
  p.child.stdin?.on('error', () => {});
  return p;
}

/** `count` numbered lines `line-000001 <filler>\n`. */
export function numberedLines(count: number, filler = 'payload', from = 1): Buffer {
  const parts: string[] = [];
  for (let i = from; i < from + count; i++) parts.push(`line-${String(i).padStart(7, '0')} ${filler}\n`);
  return Buffer.from(parts.join(''));
}

/** Numbers of `line-NNNNNNN` lines, in received order. */
export function lineNumbers(lines: string[]): number[] {
  return lines.map((l) => {
    const m = /line-(\d{7})/.exec(l);
    return m ? Number(m[1]) : -1;
  });
}

/** Writes to a child's stdin, waiting for the pipe to take it. */
export function writeStdin(p: Proc, data: Buffer | string): Promise<void> {
  return new Promise((res, rej) => {
    p.child.stdin!.write(data, (err) => (err ? rej(err) : res()));
  });
}

/** Reads a metric value from a Prometheus text page. */
export async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(url)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').pop()) : Number.NaN;
}

/**
 * Feeds a running `oklog forward` numbered lines steadily, calls `restart` (which stops and starts
 * the ingester) while records are in flight, keeps producing a little longer, then ends stdin and
 * waits for the forwarder to exit. Returns how many lines were produced. `ready` says when the
 * forwarder is up (default: its `connected` line; -ack logs none).
 */
export async function produceThroughRestart(
  fwd: Proc,
  restart: () => Promise<void>,
  ready: () => boolean | Promise<boolean> = () => fwd.stderr().includes('msg=connected'),
): Promise<number> {
  await waitFor(ready, 'forwarder ready');
  // A steady producer, so records are in flight when the node goes down and while it is away.
  let next = 1;
  let producing = true;
  const producer = (async () => {
    while (producing) {
      await writeStdin(fwd, numberedLines(2000, 'payload', next));
      next += 2000;
      await sleep(5);
    }
  })();
  await sleep(500);
  await restart();
  await sleep(500);
  producing = false;
  await producer;
  fwd.child.stdin!.end();
  return next - 1;
}
