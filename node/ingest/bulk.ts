// Bulk listener (7653), which OK Log left as TODO (reference §3.1, DESIGN.md §5):
//
//   client: lines … then half-close (shutdown(SHUT_WR))
//   node:   "OK <records>\n" once the segment holding exactly those lines has been committed
//           through the segment API (a store node has replicated it), then close;
//           "ERR <reason>\n" otherwise, then close.
//
// The upload is written as received into its own active segment (no rotation, so it stays one
// segment) and flushed at the half-close. ERR reasons: `line too long`, `invalid topic`,
// `upload too large`, `write failed`, `shutting down`, `timeout waiting for commit`. After an ERR
// sent before the half-close the rest of the upload is read and discarded, so the client sees the
// reply instead of a reset. Whatever the reason, a client that got ERR (or nothing) resends: the
// protocol is at-least-once, and a resent copy carries new ULIDs, so duplicates stay visible.

import type { Socket } from 'node:net';
import { peerAddress } from '../../shared/addr.ts';
import type { IngestContext } from './context.ts';
import type { Framed, LineFramer } from './line-reader.ts';
import type { Connection, ConnectionSet } from './listeners.ts';
import { WriteQueue } from './write-queue.ts';
import type { Writer } from './writer.ts';

/** How long an upload answered ERR early may keep sending before it is cut off. */
const DISCARD_GRACE_MS = 30_000;
const MAX_QUEUED_BYTES = 1024 * 1024;

type State = 'receiving' | 'discarding' | 'waiting' | 'done';

export class BulkConnection implements Connection {
  private readonly framer: LineFramer;
  private readonly writer: Writer;
  private readonly remote: string;
  private state: State = 'receiving';
  private records = 0;
  private bytes = 0;
  private readonly queue: WriteQueue;
  private cancelWait: (() => void) | null = null;
  private waitTimer: NodeJS.Timeout | null = null;
  private discardTimer: NodeJS.Timeout | null = null;
  private settled: Promise<void>;
  private settle!: () => void;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: IngestContext,
    private readonly set: ConnectionSet,
  ) {
    this.remote = peerAddress(socket);
    this.framer = ctx.framer();
    this.writer = ctx.writer(false);
    this.queue = new WriteQueue(this.writer, ctx.memory, false, undefined, ctx.pool);
    this.settled = new Promise((r) => {
      this.settle = r;
    });
    set.add(this, 'bulk');
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => void this.onEnd());
    socket.on('error', (err) => ctx.logger.debug({ err, remote: this.remote }, 'bulk connection error'));
    socket.on('close', () => void this.onClose());
  }

  private onData(chunk: Buffer): void {
    if (this.state !== 'receiving') return; // discarding: read and drop
    const framed = this.framer.push(chunk);
    if (framed.tooLarge > 0) {
      this.ctx.tooLarge(framed.tooLarge, this.remote, 'bulk');
      return void this.reject('line too long');
    }
    if (framed.invalidTopic) {
      this.ctx.metrics.recordsDropped.inc({ reason: 'invalid_topic' });
      return void this.reject('invalid topic');
    }
    this.accept(framed);
  }

  private accept(framed: Framed): boolean {
    if (!framed.buf) return true;
    this.bytes += framed.buf.length;
    if (this.bytes > this.ctx.settings.bulkMaxSize) {
      void this.reject('upload too large');
      return false;
    }
    this.records += framed.records;
    this.queue.push(framed.buf, framed.records);
    if (this.queue.bytes > MAX_QUEUED_BYTES || this.ctx.memory.full) this.socket.pause();
    void this.pump();
    return true;
  }

  /** Writes what is queued; then reads on (see write-queue.ts), or refuses after a failed write. */
  private async pump(): Promise<void> {
    await this.queue.pump();
    if (this.queue.failed && this.state === 'receiving') void this.reject('write failed');
    else if (this.state === 'receiving' && this.queue.empty && this.socket.isPaused()) this.socket.resume();
  }

  private flushQueue(): Promise<void> {
    return this.queue.idle();
  }

  /** The half-close: the upload is complete. Flush it as one segment and wait for its commit. */
  private async onEnd(): Promise<void> {
    if (this.state === 'discarding') return this.finish();
    if (this.state !== 'receiving') return;
    const framed = this.framer.end();
    if (framed.tooLarge > 0) return this.reject('line too long');
    if (!this.accept(framed)) return;
    this.state = 'waiting';
    await this.flushQueue();
    if (this.queue.failed) return this.reply('ERR write failed', true);
    if (this.records === 0) {
      await this.writer.close();
      return this.reply('OK 0', false);
    }
    const seg = this.writer.segment;
    if (!seg) return this.reply('ERR write failed', true);
    // Registered before the flush: the segment cannot be claimed, read and committed unseen.
    const wait = this.ctx.log.whenCommitted(seg.id);
    this.cancelWait = wait.cancel;
    await this.writer.close();
    if (this.queue.failed || this.state !== 'waiting') {
      wait.cancel();
      return this.state === 'waiting' ? this.reply('ERR write failed', true) : undefined;
    }
    this.waitTimer = setTimeout(() => {
      wait.cancel();
      this.reply('ERR timeout waiting for commit', true);
    }, this.ctx.settings.bulkAckTimeoutMs);
    this.waitTimer.unref();
    await wait.promise;
    if (this.state !== 'waiting') return;
    this.reply(`OK ${this.records}`, false);
  }

  /** An error before the half-close: answer now, drop the partial segment, discard the rest. */
  private async reject(reason: string): Promise<void> {
    if (this.state !== 'receiving') return;
    this.state = 'discarding';
    this.queue.clear();
    this.framer.discard();
    this.ctx.metrics.bulkResults.inc({ result: 'err' });
    this.ctx.logger.info({ remote: this.remote, reason }, 'bulk upload refused');
    this.socket.end(`ERR ${reason}\n`);
    if (this.socket.isPaused()) this.socket.resume();
    this.discardTimer = setTimeout(() => this.socket.destroy(), DISCARD_GRACE_MS);
    this.discardTimer.unref();
    this.cleanup = (async () => {
      await this.flushQueue();
      await this.writer.discard();
    })();
    await this.cleanup;
  }

  private reply(line: string, isErr: boolean): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.ctx.metrics.bulkResults.inc({ result: isErr ? 'err' : 'ok' });
    if (isErr) this.ctx.logger.info({ remote: this.remote, reply: line }, 'bulk upload answered');
    this.socket.end(`${line}\n`);
    void this.finish();
  }

  /** Reset before the half-close: the client got nothing and will resend; drop the segment. */
  private async onClose(): Promise<void> {
    if (this.state === 'receiving') {
      this.state = 'done';
      this.queue.clear();
      this.framer.discard();
      await this.flushQueue();
      await this.writer.discard();
    } else if (this.state === 'waiting') {
      // Client gone while we wait: the flushed segment stays and will be consumed; stop waiting.
      this.state = 'done';
      this.cancelWait?.();
    }
    await this.finish();
  }

  private finishing: Promise<void> | null = null;
  /** The removal of a refused upload's segment; the connection counts until it is done. */
  private cleanup: Promise<void> = Promise.resolve();
  private finish(): Promise<void> {
    this.finishing ??= (async () => {
      if (this.waitTimer) clearTimeout(this.waitTimer);
      if (this.discardTimer) clearTimeout(this.discardTimer);
      await this.cleanup;
      this.set.delete(this);
      this.settle();
    })();
    return this.finishing;
  }

  /** SIGTERM: an upload in progress or awaiting its commit is answered ERR (the client resends). */
  async shutdown(): Promise<void> {
    if (this.state === 'receiving' || this.state === 'discarding') {
      const wasReceiving = this.state === 'receiving';
      this.state = 'done';
      this.queue.clear();
      this.framer.discard();
      await this.cleanup;
      await this.flushQueue();
      await this.writer.discard();
      if (wasReceiving) {
        this.ctx.metrics.bulkResults.inc({ result: 'err' });
        this.socket.end('ERR shutting down\n');
      }
      await this.finish();
    } else if (this.state === 'waiting') {
      this.cancelWait?.();
      await this.writer.idle();
      this.reply('ERR shutting down', true);
    }
    await this.settled;
    if (!this.socket.destroyed) this.socket.destroySoon(); // after the reply is written
  }
}
