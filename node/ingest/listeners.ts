// The fast (7651) and durable (7652) TCP listeners (reference §3.1), and the binding and tracking
// of ingest sockets shared with the bulk listener.
//
// One socket read → one framed batch → one writev. Fast mode keeps reading while a write is in
// flight (batches queue up and go out together) and pauses the socket once 512 KiB are queued.
// Durable mode pauses the socket for every batch and resumes only after write + fsync: group
// commit, so a crash loses at most the batch being read and a clean shutdown loses nothing read.
import { createServer, type Server, type Socket } from 'node:net';
import { parseAddr, peerAddress } from '../../shared/addr.ts';
import { InvalidArgumentError } from '../../shared/errors.ts';
import { listenHost } from '../../shared/listen.ts';
import type { IngestContext } from './context.ts';
import { ListenError } from './errors.ts';
import type { Framed, LineFramer } from './line-reader.ts';
import type { IngestMetrics, Modality } from './metrics.ts';
import { WriteQueue } from './write-queue.ts';
import type { Writer } from './writer.ts';

/** Fast mode stops reading a connection once this many framed bytes wait for the disk. */
const MAX_QUEUED_BYTES = 512 * 1024;

export interface Connection {
  /** Stops reading, writes and flushes what was read, closes the socket. */
  shutdown(): Promise<void>;
}

/**
 * Live connections of one node, by modality: the single source of both the
 * `oklog_connected_clients` gauge and the connection counts of `GET /ingest/stats`, so that SIGTERM
 * can flush and close each of them. A connection counts until its records are flushed.
 */
export class ConnectionSet {
  private readonly live = new Map<Connection, Modality>();
  private readonly counts: Record<Modality, number> = { fast: 0, durable: 0, bulk: 0 };
  constructor(private readonly gauge: IngestMetrics['connectedClients']) {}
  add(c: Connection, modality: Modality): void {
    if (this.live.has(c)) return;
    this.live.set(c, modality);
    this.counts[modality]++;
    this.gauge.inc({ modality });
  }
  delete(c: Connection): void {
    const modality = this.live.get(c);
    if (!modality) return;
    this.live.delete(c);
    this.counts[modality]--;
    this.gauge.dec({ modality });
  }
  countsByModality(): Record<Modality, number> {
    return { ...this.counts };
  }
  async shutdownAll(): Promise<void> {
    await Promise.all([...this.live.keys()].map((c) => c.shutdown()));
  }
}

/** A fast or durable connection: bytes in, records out, nothing sent back (OK Log's wire). */
export class StreamConnection implements Connection {
  private readonly framer: LineFramer;
  private readonly writer: Writer;
  private readonly durable: boolean;
  private readonly remote: string;
  private readonly queue: WriteQueue;
  private finishing: Promise<void> | null = null;
  /** Set synchronously when finishing starts: no more reading, no more resuming. */
  private closing = false;

  constructor(
    private readonly socket: Socket,
    private readonly modality: 'fast' | 'durable',
    private readonly ctx: IngestContext,
    private readonly set: ConnectionSet,
  ) {
    this.durable = modality === 'durable';
    this.remote = peerAddress(socket);
    this.framer = ctx.framer();
    this.writer = ctx.writer();
    this.queue = new WriteQueue(
      this.writer,
      ctx.memory,
      this.durable,
      (records) => ctx.metrics.recordsDropped.inc({ reason: 'write_error' }, records),
      ctx.pool,
    );
    set.add(this, modality);
    // On the client's EOF, close our side only in close(), after what was read is written (and,
    // durable, fsynced): `oklog forward` takes that FIN as the confirmation that it may exit 0.
    // (Node would otherwise send the FIN as soon as the EOF is read.)
    socket.allowHalfOpen = true;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => {
      if (this.closing) return;
      this.accept(this.framer.end());
      void this.finish('eof');
    });
    // An error (ECONNRESET…) or a close without a clean end cuts the last line: drop it.
    socket.on('error', (err) => {
      ctx.logger.debug({ err, remote: this.remote, modality }, 'ingest connection error');
      void this.finish('reset');
    });
    socket.on('close', () => void this.finish('reset'));
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return;
    const framed = this.framer.push(chunk);
    this.accept(framed);
    if (framed.invalidTopic) {
      // OK Log closes silently; we also log (debug) and count, and keep the records before it.
      this.ctx.metrics.recordsDropped.inc({ reason: 'invalid_topic' });
      this.ctx.logger.debug({ remote: this.remote, modality: this.modality }, 'illegal topic name; closing');
      void this.finish('invalid_topic');
      return;
    }
    if (this.queue.empty) return;
    if (this.durable || this.queue.bytes > MAX_QUEUED_BYTES || this.ctx.memory.full) this.socket.pause();
    void this.pump();
  }

  private accept(framed: Framed): void {
    this.ctx.tooLarge(framed.tooLarge, this.remote, this.modality);
    if (framed.buf) this.queue.push(framed.buf, framed.records);
  }

  /** Writes everything queued, then resumes reading. */
  private async pump(): Promise<void> {
    await this.queue.pump();
    if (this.queue.failed) {
      // Logged and counted by the writer. Reset the connection (not a FIN, which a forwarder
      // takes for "everything read"): it sends its unconfirmed records again. The node stays up.
      this.socket.resetAndDestroy();
      return;
    }
    // Nothing of ours is queued any more, so we may read on even when the budget is full (one
    // chunk at a time): a connection is never starved by the others' queues.
    if (!this.closing && this.queue.empty && this.socket.isPaused()) this.socket.resume();
  }

  shutdown(): Promise<void> {
    return this.finish('shutdown');
  }

  private finish(why: 'eof' | 'reset' | 'invalid_topic' | 'shutdown'): Promise<void> {
    if (this.finishing) return this.finishing;
    this.closing = true;
    this.finishing = this.close(why);
    return this.finishing;
  }

  private async close(why: 'eof' | 'reset' | 'invalid_topic' | 'shutdown'): Promise<void> {
    this.socket.pause();
    this.socket.removeAllListeners('data');
    if (why !== 'eof') {
      const cut = this.framer.discard();
      if (cut > 0) this.ctx.metrics.recordsDropped.inc({ reason: 'truncated' }, cut);
    }
    await this.queue.idle();
    let clean = why === 'eof' && !this.queue.failed;
    try {
      await this.writer.close();
    } catch {
      clean = false; // logged and counted by the writer
    }
    // A FIN only when everything up to the client's EOF was read and written: that is what a
    // forwarder waits for before it exits 0. Any other end (shutdown with data unread, an invalid
    // topic with lines after it, a failed write) is a reset, so the forwarder sends again what it
    // cannot know was stored.
    if (clean) this.socket.destroy();
    else this.socket.resetAndDestroy();
    this.set.delete(this);
  }
}

export interface ListenSpec {
  flag: string;
  address: string;
  defaultPort: number;
  allowHalfOpen?: boolean;
}

/** Binds a TCP listener or fails with a ListenError naming the flag (fatal at start-up). */
export async function listen(spec: ListenSpec, onConnection: (socket: Socket) => void): Promise<Server> {
  const addr = parseAddr(spec.address, spec.defaultPort);
  if (!['tcp', 'tcp4', 'tcp6'].includes(addr.network))
    throw new InvalidArgumentError(
      `-${spec.flag}: unsupported network ${JSON.stringify(addr.network)}; use tcp://host:port`,
    );
  const server = createServer({ allowHalfOpen: spec.allowHalfOpen ?? false }, (socket) => {
    // Without a listener an ECONNRESET would be an uncaught exception and kill the node.
    socket.on('error', () => {});
    onConnection(socket);
  });
  const { host, ipv6Only } = await listenHost(addr);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: addr.port, ipv6Only }, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err) => {
    throw new ListenError(spec.flag, addr.address, err);
  });
  server.on('error', () => {}); // accept errors (EMFILE) must not crash the node; libuv retries
  return server;
}

export function boundPort(server: Server): number {
  const a = server.address();
  return typeof a === 'object' && a ? a.port : 0;
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
