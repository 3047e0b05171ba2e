// Fast/durable TCP forwarding: framed records from the buffer to one ingester connection at a
// time, reconnecting (re-resolving names, rotating targets, backing off) when it is lost.
//
// What is guaranteed. The fast and durable protocols send nothing back, so the forwarder never
// learns what an ingester has read. It therefore keeps two things:
//  - the batch being written: if its write fails, or the connection dies before the kernel took
//    it, it is sent again on the next connection. The record in flight is never lost (OK Log lost
//    it, §11.2 item 13).
//  - a resend window: the last `resendWindowBytes` of records the kernel accepted within the
//    last `resendWindowMs`. Those may still sit in socket buffers (ours or the ingester's) when a
//    connection dies, so after a reconnect they are sent again, ahead of anything newer. Within
//    the window delivery is at-least-once (duplicates carry new ULIDs, so they are visible);
//    older bytes are assumed delivered: a live ingester reads its socket within milliseconds, so
//    only an ingester that stopped reading for longer than the age and then died loses them. Each
//    record is re-sent from the window at most once, so an ingester that closes the connection
//    on a particular line (dynamic topics) cannot make the forwarder loop forever.
// Order is kept: window, then the failed batch, then the buffer.
import net from 'node:net';
import { describeError } from '../../shared/errors.ts';
import type { Logger } from '../common.ts';
import { type Backoff, sleep } from './backoff.ts';
import type { RecordBuffer } from './buffer.ts';
import type { Block } from './line-splitter.ts';
import type { ForwardMetrics } from './metrics.ts';
import type { Endpoint, TargetRing } from './targets.ts';
import { onAbort, onSettled, onTimeout, type Subscribe, Waiters, waitAny } from './wait.ts';

/**
 * Blocks on their way out as one corked write (no copy to join them); `sent` once first written
 * (for metrics), `at` when.
 */
interface Outgoing {
  parts: Buffer[];
  bytes: number;
  records: number;
  resent?: boolean;
  sent?: boolean;
  at?: number;
}

function outgoing(blocks: Block[]): Outgoing | null {
  if (blocks.length === 0) return null;
  let bytes = 0;
  let records = 0;
  for (const b of blocks) {
    bytes += b.data.length;
    records += b.records;
  }
  return { parts: blocks.map((b) => b.data), bytes, records, resent: blocks.every((b) => b.resent) };
}

/** One TCP connection to an ingester, with a promise-based write and close detection. */
export class Connection {
  closed = false;
  reason: Error | null = null;
  private readonly closeWaiters = new Waiters();

  private constructor(readonly socket: net.Socket) {
    socket.on('error', (err) => {
      this.reason ??= err;
    });
    // The ingester's FIN: it will read no more. (Node ends our side too.)
    socket.on('end', () => this.markClosed(new Error('connection closed by ingester')));
    socket.on('close', () => this.markClosed(new Error('connection closed')));
    // Fast/durable ingesters send nothing; reading is only how a close is noticed.
    socket.resume();
  }

  static open(ep: Endpoint, timeoutMs: number, signal: AbortSignal): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: ep.host, port: ep.port, family: ep.family || undefined });
      const done = (err?: Error) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        socket.off('error', done);
        if (err) {
          socket.destroy();
          reject(err);
        } else resolve(new Connection(socket));
      };
      const onAbort = () => done(new Error('stopped'));
      const timer = setTimeout(() => done(new Error(`connect timeout after ${timeoutMs}ms`)), timeoutMs);
      signal.addEventListener('abort', onAbort, { once: true });
      socket.once('error', done);
      socket.once('connect', () => {
        socket.setNoDelay(true); // we batch ourselves; small lines should not wait for Nagle
        socket.setKeepAlive(true, 15_000); // notice a vanished ingester while idle
        done();
      });
    });
  }

  private markClosed(reason: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.reason ??= reason;
    this.closeWaiters.fire();
  }

  /** Fires when the connection is closed (at once if it already is). */
  onClose: Subscribe = (wake) => {
    if (this.closed) {
      wake();
      return () => {};
    }
    return this.closeWaiters.subscribe(wake);
  };

  /**
   * Resolves once the kernel accepted all of `parts` (written corked: one writev); rejects if
   * the connection fails first.
   */
  write(parts: readonly Buffer[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(this.reason ?? new Error('connection closed'));
        return;
      }
      const off = this.closeWaiters.subscribe(() => reject(this.reason ?? new Error('connection closed')));
      this.socket.cork();
      // Callbacks run in order, and a failed write fails the ones after it: the last one speaks.
      for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i]);
      this.socket.write(parts[parts.length - 1], (err) => {
        off();
        if (err) reject(err);
        else resolve();
      });
      this.socket.uncork();
    });
  }

  /** Half-closes and waits (bounded) for the ingester to close, so it reads everything first. */
  async end(timeoutMs: number): Promise<void> {
    this.socket.end();
    await waitAny(this.onClose, onTimeout(timeoutMs));
    this.socket.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface TcpSenderOptions {
  targets: TargetRing;
  buffer: RecordBuffer;
  log: Logger;
  metrics: ForwardMetrics;
  backoff: Backoff;
  /** Bytes of recently written records to send again after a reconnect (0: none). */
  resendWindowBytes: number;
  /** Only records written this recently are sent again (ms). */
  resendWindowMs: number;
  /** Largest single write (several blocks are joined up to this). */
  writeBatchBytes?: number;
  connectTimeoutMs?: number;
}

export type SendOutcome = 'done' | 'stopped';

/** Writes remembered in the resend window at most (at ~4k writes/s still 2 s of them). */
const MAX_WINDOW_ENTRIES = 8192;

export class TcpSender {
  private resend: Outgoing[] = [];
  private window: Outgoing[] = [];
  private windowBytes = 0;
  private inflight: Outgoing | null = null;
  private readonly abort = new AbortController();
  private readonly aborted = onAbort(this.abort.signal);
  private lastWarn = new Map<string, number>();

  constructor(private readonly o: TcpSenderOptions) {}

  /** Records not yet written to any connection (buffered, in flight or waiting to be re-sent). */
  get pendingRecords(): number {
    let n = this.o.buffer.records + (this.inflight?.records ?? 0);
    for (const b of this.resend) n += b.records;
    return n;
  }

  /** Gives up: `run` resolves with 'stopped' as soon as possible. */
  stop(): void {
    this.abort.abort();
  }

  /** Forwards until the input has ended and everything was written ('done'), or `stop`. */
  async run(): Promise<SendOutcome> {
    const { targets, backoff, log, metrics } = this.o;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      if (this.o.buffer.ended && this.o.buffer.empty && this.resend.length === 0) return 'done';
      const target = targets.current;
      let conn: Connection;
      let ep: Endpoint;
      try {
        ep = await targets.resolve();
        conn = await Connection.open(ep, this.o.connectTimeoutMs ?? 5000, signal);
      } catch (err) {
        if (signal.aborted) break;
        this.warnRateLimited(`connect:${target.raw}`, 'connect failed', {
          target: target.raw,
          err: describeError(err),
        });
        targets.rotate();
        await sleep(backoff.next(), signal);
        continue;
      }
      this.lastWarn.delete(`connect:${target.raw}`);
      log.info('connected', { target: target.raw, addr: `${ep.host}:${ep.port}` });
      const outcome = await this.pump(conn);
      if (outcome === 'done') {
        await conn.end(2000);
        return 'done';
      }
      if (outcome === 'stopped') {
        conn.destroy();
        break;
      }
      conn.destroy();
      metrics.disconnects.inc();
      const again = this.requeueWindow();
      log.warn('connection lost', {
        target: target.raw,
        err: describeError(conn.reason),
        resend_records: again,
      });
      targets.rotate();
      await sleep(backoff.next(), signal);
    }
    return 'stopped';
  }

  private async pump(conn: Connection): Promise<'done' | 'lost' | 'stopped'> {
    const { buffer, backoff, metrics } = this.o;
    const batchBytes = this.o.writeBatchBytes ?? 256 * 1024;
    for (;;) {
      if (this.abort.signal.aborted) return 'stopped';
      if (conn.closed) return 'lost';
      const batch: Outgoing | null = this.resend.shift() ?? outgoing(buffer.takeBlocks(batchBytes));
      if (!batch) {
        if (buffer.ended) return 'done';
        await waitAny(buffer.onData, conn.onClose, this.aborted);
        continue;
      }
      this.inflight = batch;
      let failed = false;
      const written = conn.write(batch.parts).catch((err: Error) => {
        conn.reason ??= err;
        failed = true;
      });
      await waitAny(onSettled(written), this.aborted);
      this.inflight = null;
      if (this.abort.signal.aborted && !failed) {
        // Stopped mid-write: whether it got out is unknown; count it as not delivered.
        this.resend.unshift(batch);
        return 'stopped';
      }
      if (failed) {
        this.resend.unshift(batch);
        metrics.resent.inc(batch.records);
        return 'lost';
      }
      if (!batch.sent) {
        batch.sent = true;
        metrics.records.inc(batch.records);
        metrics.bytes.inc(batch.bytes);
      }
      backoff.reset();
      this.remember(batch);
    }
  }

  /** Keeps the most recent written blocks, up to the window's size, age and entry count. */
  private remember(batch: Outgoing): void {
    const limit = this.o.resendWindowBytes;
    if (limit <= 0) return;
    const now = performance.now();
    batch.at = now;
    this.window.push(batch);
    this.windowBytes += batch.bytes;
    // Bytes bound the data; age and count bound the objects when writes are tiny (a trickle of
    // single lines would otherwise keep hundreds of thousands of small blocks).
    const since = now - this.o.resendWindowMs;
    while (
      this.window.length > 1 &&
      (this.windowBytes - this.window[0].bytes >= limit ||
        (this.window[0].at ?? 0) < since ||
        this.window.length > MAX_WINDOW_ENTRIES)
    ) {
      this.windowBytes -= this.window.shift()!.bytes;
    }
  }

  /** After a lost connection: the window goes back in front of the queue. Returns its records. */
  private requeueWindow(): number {
    const again: Outgoing[] = [];
    let records = 0;
    const since = performance.now() - this.o.resendWindowMs;
    for (const b of this.window) {
      if (b.resent || (b.at ?? 0) < since) continue;
      again.push({ parts: b.parts, bytes: b.bytes, records: b.records, resent: true, sent: true });
      records += b.records;
    }
    this.window = [];
    this.windowBytes = 0;
    this.o.metrics.resent.inc(records);
    this.resend = [...again, ...this.resend];
    return records + this.resend.slice(again.length).reduce((n, b) => n + b.records, 0);
  }

  /** Connection failures repeat every second while an ingester is down: log every 10 s. */
  private warnRateLimited(key: string, msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    const last = this.lastWarn.get(key);
    if (last !== undefined && now - last < 10_000) return;
    this.lastWarn.set(key, now);
    this.o.log.warn(msg, fields);
  }
}
