// Fast/durable TCP forwarding: framed records from the buffer to one ingester connection at a
// time, reconnecting (re-resolving names, rotating targets, backing off) when it is lost.
//
// What is guaranteed. The fast and durable protocols send nothing back, so while a connection is
// up the forwarder never learns what an ingester has read. It therefore keeps:
//  - the batch being written: if its write fails, or the connection dies before the kernel took
//    it, it is sent again on the next connection. The record in flight is never lost (OK Log lost
//    it, §11.2 item 13).
//  - a resend window (resend-window.ts): the writes the kernel accepted that may still sit unread
//    in socket buffers (ours or the ingester's). After a lost connection they are sent again,
//    ahead of anything newer: at-least-once within the window, duplicates carry new ULIDs.
// At end of input the connection is half-closed and the window is held until the ingester closes
// its side cleanly (FIN, no reset): our ingesters do that only after reading to our EOF and
// writing what they read. A reset instead sends the window again on a new connection; no answer
// within `closeTimeoutMs` is reported as unconfirmed (exit 1), never as success.
// Order is kept: window, then the failed batch, then the buffer.
import net from 'node:net';
import { joinHostPort } from '../../shared/addr.ts';
import { describeError } from '../../shared/errors.ts';
import { formatDuration } from '../../shared/time.ts';
import type { Logger } from '../common.ts';
import { type Backoff, sleep } from './backoff.ts';
import type { RecordBuffer } from './buffer.ts';
import type { Block } from './line-splitter.ts';
import type { ForwardMetrics } from './metrics.ts';
import { ResendWindow } from './resend-window.ts';
import { Retrying } from './retrying.ts';
import type { Endpoint, TargetRing } from './targets.ts';
import { onAbort, onSettled, onTimeout, type Subscribe, Waiters, waitAny } from './wait.ts';

/** Blocks on their way out as one corked write (no copy to join them). */
interface Outgoing {
  parts: Buffer[];
  bytes: number;
  records: number;
  /** Came from a resend window (is not re-sent from one a second time). */
  resent: boolean;
  /** Written once already (counted in the metrics). */
  sent: boolean;
}

function outgoing(blocks: Block[]): Outgoing | null {
  if (blocks.length === 0) return null;
  let bytes = 0;
  let records = 0;
  for (const b of blocks) {
    bytes += b.data.length;
    records += b.records;
  }
  return {
    parts: blocks.map((b) => b.data),
    bytes,
    records,
    resent: blocks.every((b) => b.resent),
    sent: false,
  };
}

/** How a half-closed connection ended: the ingester's clean close, a reset, no answer, or stop. */
export type FinishOutcome = 'clean' | 'reset' | 'timeout' | 'stopped';

/** Bytes libuv holds because the kernel's send buffer is full (Node keeps this on the handle). */
function kernelBacklog(socket: net.Socket): number | null {
  const handle = (socket as unknown as { _handle?: { writeQueueSize?: unknown } })._handle;
  return typeof handle?.writeQueueSize === 'number' ? handle.writeQueueSize : null;
}

/** One TCP connection to an ingester, with a promise-based write and close detection. */
export class Connection {
  closed = false;
  reason: Error | null = null;
  /** The ingester's FIN arrived. */
  private peerEnded = false;
  private errored = false;
  private fullyClosed = false;
  private readonly closeWaiters = new Waiters();
  private readonly fullyClosedWaiters = new Waiters();

  private constructor(readonly socket: net.Socket) {
    socket.on('error', (err) => {
      this.errored = true;
      this.reason ??= err;
    });
    // The ingester's FIN: it will read no more. (Node ends our side too.)
    socket.on('end', () => {
      this.peerEnded = true;
      this.markClosed(new Error('connection closed by ingester'));
    });
    socket.on('close', () => {
      this.markClosed(new Error('connection closed'));
      this.fullyClosed = true;
      this.fullyClosedWaiters.fire();
    });
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

  private onFullyClosed: Subscribe = (wake) => {
    if (this.fullyClosed) {
      wake();
      return () => {};
    }
    return this.fullyClosedWaiters.subscribe(wake);
  };

  /**
   * Resolves once the kernel accepted all of `parts` (written corked: one writev), with whether
   * the write had to wait for room in the send buffer (backpressure: the ingester is behind);
   * rejects if the connection fails first.
   */
  write(parts: readonly Buffer[]): Promise<boolean> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(this.reason ?? new Error('connection closed'));
        return;
      }
      const began = performance.now();
      const off = this.closeWaiters.subscribe(() => reject(this.reason ?? new Error('connection closed')));
      this.socket.cork();
      let backlog: number | null = null;
      // Callbacks run in order, and a failed write fails the ones after it: the last one speaks.
      for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i]);
      this.socket.write(parts[parts.length - 1], (err) => {
        off();
        if (err) reject(err);
        // Without the handle's count (never seen on Node 20), a slow callback means the same.
        else resolve(backlog === null ? performance.now() - began > 50 : backlog > 0);
      });
      this.socket.uncork();
      // uncork hands everything to libuv, which writes what the kernel takes at once.
      backlog = kernelBacklog(this.socket);
    });
  }

  /**
   * Half-closes and waits for the ingester to close its side. 'clean' only for its FIN with no
   * reset: it read up to our EOF. A close that came before our EOF is a lost connection.
   */
  async finish(timeoutMs: number, signal: AbortSignal): Promise<FinishOutcome> {
    if (this.closed) return 'reset';
    this.socket.end();
    await waitAny(this.onFullyClosed, onTimeout(timeoutMs), onAbort(signal));
    if (this.fullyClosed) return this.peerEnded && !this.errored ? 'clean' : 'reset';
    return signal.aborted ? 'stopped' : 'timeout';
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
  /** Bytes of recently written records kept to send again after a reconnect (0: none). */
  resendWindowBytes: number;
  /** Unpinned window entries older than this are assumed read (ms; 0: no age limit). */
  resendWindowMs: number;
  /** Largest single write (several blocks are joined up to this). */
  writeBatchBytes?: number;
  connectTimeoutMs?: number;
  /** At end of input, how long to wait for the ingester to confirm by closing (ms). */
  closeTimeoutMs?: number;
  /** Stop with GaveUpError once no ingester could be reached for this long (ms; 0: never). */
  giveUpMs?: number;
}

/**
 * 'done': everything written and confirmed. 'unconfirmed': everything written, but the ingester
 * did not confirm (see `unconfirmedRecords`). 'stopped': `stop` was called.
 */
export type SendOutcome = 'done' | 'unconfirmed' | 'stopped';

export class TcpSender {
  private resend: Outgoing[] = [];
  private readonly window: ResendWindow;
  private inflight: Outgoing | null = null;
  private readonly abort = new AbortController();
  private readonly aborted = onAbort(this.abort.signal);
  private readonly retrying: Retrying;
  /** Records that may be lost and will not be sent again (re-sent once, lost again). */
  private skipped = 0;
  /** A connection was lost after our EOF and nothing could be sent again (window off). */
  private endLost = false;
  private unconfirmedAtEnd = 0;
  /** Records written on the current connection (what a window-less reset may have lost). */
  private connRecords = 0;

  /**
   * Records of the connection being given up that the ingester never confirmed: the window's, or
   * without one (-resend-window 0) every record the connection carried.
   */
  private unconfirmedOnConnection(): number {
    return this.window.enabled ? this.window.records : this.connRecords;
  }

  constructor(private readonly o: TcpSenderOptions) {
    this.window = new ResendWindow({ maxBytes: o.resendWindowBytes, maxAgeMs: o.resendWindowMs });
    this.retrying = new Retrying({
      log: o.log,
      targets: o.targets.size,
      giveUpMs: o.giveUpMs ?? 0,
      message: 'no ingester reachable; still retrying, records are kept',
    });
  }

  /** Records not yet written to any connection (buffered, in flight or waiting to be re-sent). */
  get pendingRecords(): number {
    let n = this.o.buffer.records + (this.inflight?.records ?? 0);
    for (const b of this.resend) n += b.records;
    return n;
  }

  /** Records written whose delivery the ingester did not confirm, once `run` has ended. */
  get unconfirmedRecords(): number {
    return this.unconfirmedAtEnd + this.skipped;
  }

  /** Gives up: `run` resolves with 'stopped' as soon as possible. */
  stop(): void {
    this.abort.abort();
  }

  /** Forwards until the input has ended and everything was written and confirmed, or `stop`. */
  async run(): Promise<SendOutcome> {
    const { targets, backoff, log, metrics, buffer } = this.o;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      if (buffer.ended && buffer.empty && this.resend.length === 0)
        return this.skipped > 0 || this.endLost ? 'unconfirmed' : 'done';
      const target = targets.current;
      let conn: Connection;
      let ep: Endpoint;
      try {
        ep = await targets.resolve();
        conn = await Connection.open(ep, this.o.connectTimeoutMs ?? 5000, signal);
      } catch (err) {
        if (signal.aborted) break;
        this.retrying.failure(target.raw, err, { records_waiting: this.pendingRecords });
        if (this.retrying.expired) throw this.retrying.gaveUp('no ingester reachable', this.pendingRecords);
        targets.rotate();
        await sleep(this.retrying.capSleep(backoff.next()), signal);
        continue;
      }
      this.retrying.success(target.raw);
      this.connRecords = 0;
      log.info('connected', { target: target.raw, addr: joinHostPort(ep.host, ep.port) });
      const outcome = await this.pump(conn);
      if (outcome === 'stopped') {
        conn.destroy();
        this.unconfirmedAtEnd = this.unconfirmedOnConnection();
        break;
      }
      if (outcome === 'done') {
        // Everything is written. Nothing leaves the window by age now: we wait for proof.
        this.window.pinAll();
        const timeoutMs = this.o.closeTimeoutMs ?? 30_000;
        const end = await conn.finish(timeoutMs, signal);
        if (end === 'clean') {
          this.window.clear();
          return this.skipped > 0 ? 'unconfirmed' : 'done';
        }
        if (end === 'stopped' || end === 'timeout') {
          conn.destroy();
          this.unconfirmedAtEnd = this.unconfirmedOnConnection();
          if (end === 'stopped') break;
          log.warn('the ingester did not confirm it read everything; records may be undelivered', {
            target: target.raw,
            records: this.unconfirmedAtEnd,
            waited: formatDuration(timeoutMs),
            hint: 'raise -close-timeout, or use -ack for acknowledged delivery',
          });
          return 'unconfirmed';
        }
        // A reset after our EOF: the ingester did not read everything. Send the window again;
        // without one, all we can say is how many records that connection carried.
        if (!this.window.enabled) {
          this.endLost = true;
          this.unconfirmedAtEnd += this.connRecords;
        }
      }
      conn.destroy();
      metrics.disconnects.inc();
      const again = this.requeueWindow();
      log.warn('connection lost', {
        target: target.raw,
        err: describeError(conn.reason),
        resend_records: again,
        ...(this.window.enabled ? {} : { note: 'records in socket buffers may be lost (-resend-window 0)' }),
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
      let pressured = false;
      const written = conn.write(batch.parts).then(
        (p) => {
          pressured = p;
        },
        (err: Error) => {
          conn.reason ??= err;
          failed = true;
        },
      );
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
      this.connRecords += batch.records;
      this.window.add(batch, performance.now(), pressured);
    }
  }

  /** After a lost connection: the window goes back in front of the queue. Returns what waits. */
  private requeueWindow(): number {
    const { again, skippedRecords } = this.window.drain(performance.now());
    const records = again.reduce((n, b) => n + b.records, 0);
    this.o.metrics.resent.inc(records);
    if (skippedRecords > 0) {
      // Sent twice already, lost with the connection both times: not a third time, so an
      // ingester that closes on one record (dynamic topics) cannot make us loop. Not silent.
      this.skipped += skippedRecords;
      this.o.log.warn('records re-sent once already are not sent again; they may be lost', {
        records: skippedRecords,
      });
    }
    this.resend = [...again.map((e) => ({ ...e, sent: true })), ...this.resend];
    return this.resend.reduce((n, b) => n + b.records, 0);
  }
}
