// Acknowledged HTTP ingest (new): `POST /ingest/write[?topic=T]` with newline-delimited records.
//
// 200 `{"records":N,"bytes":B}` means every record of the body is fsynced (B = bytes stored,
// ULID and topic prefixes included). A 4xx or 503 means none of it was stored, so a client can
// resend the whole body: the body is framed in memory (bounded by -ingest.max-write-body per
// request and twice that across requests, 503 beyond) and written only once it is complete and
// valid. A 500 (the disk failed during the write) may leave part of it stored: a resend is then
// at-least-once, with new ULIDs. All acked writes share one writer and one ULID generator, so the shared segment
// stays sorted; concurrent requests are group-committed: one writev + one fsync for all of them.
import type { IncomingMessage } from 'node:http';
import { InvalidArgumentError, TooLargeError } from '../../shared/errors.ts';
import { isValidTopic } from '../../shared/record.ts';
import { UlidGenerator } from '../../shared/ulid.ts';
import type { IngestContext } from './context.ts';
import { BusyError, InvalidTopicError, ShuttingDownError } from './errors.ts';
import { stampUlids } from './line-reader.ts';
import type { Writer } from './writer.ts';

interface Batch {
  bufs: Buffer[];
  offsets: number[][];
  records: number;
  bytes: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface WriteResult {
  records: number;
  bytes: number;
}

export class AckedWriter {
  private writer: Writer;
  private readonly ulids: UlidGenerator;
  private queue: Batch[] = [];
  private running: Promise<void> | null = null;
  private inflight = 0;
  private closed = false;
  private readonly budget: number;

  constructor(private readonly ctx: IngestContext) {
    this.writer = ctx.writer();
    this.ulids = new UlidGenerator({ now: ctx.now });
    this.budget = 2 * ctx.settings.maxWriteBody;
  }

  /**
   * Takes `n` body bytes of the in-flight budget (2 × -ingest.max-write-body across all requests)
   * or throws BusyError (503: retry later). Framed records take the body's size plus 27 bytes and
   * the topic per record, so memory is bounded by that factor times the budget.
   */
  private reserve(n: number): void {
    if (this.inflight + n > this.budget) throw new BusyError(this.inflight);
    this.inflight += n;
  }

  /** Reads, validates and frames one request body, then stores it; resolves once fsynced. */
  async handle(req: IncomingMessage, topic: string | undefined): Promise<WriteResult> {
    if (this.closed) throw new ShuttingDownError();
    const max = this.ctx.settings.maxWriteBody;
    const declared = Number(req.headers['content-length'] ?? Number.NaN);
    if (declared > max) throw new TooLargeError(`body exceeds -ingest.max-write-body (${max} bytes)`);
    const framer = this.ctx.framer({ topic, stampLater: true });
    const bufs: Buffer[] = [];
    const offsets: number[][] = [];
    let records = 0;
    let bytes = 0;
    let received = 0;
    let reserved = 0;
    const take = (framed: ReturnType<typeof framer.push>) => {
      if (framed.tooLarge > 0) {
        this.ctx.metrics.recordsDropped.inc({ reason: 'too_large' }, framed.tooLarge);
        throw new TooLargeError(
          `a record exceeds -ingest.max-record-size (${this.ctx.settings.maxRecordSize} bytes)`,
        );
      }
      if (framed.invalidTopic) {
        this.ctx.metrics.recordsDropped.inc({ reason: 'invalid_topic' });
        throw new InvalidArgumentError('illegal topic name: a line lacks a valid "<topic> " prefix');
      }
      if (!framed.buf || !framed.ulidOffsets) return;
      bufs.push(framed.buf);
      offsets.push(framed.ulidOffsets);
      records += framed.records;
      bytes += framed.buf.length;
    };
    try {
      for await (const chunk of req as AsyncIterable<Buffer>) {
        received += chunk.length;
        if (received > max) throw new TooLargeError(`body exceeds -ingest.max-write-body (${max} bytes)`);
        this.reserve(chunk.length);
        reserved += chunk.length;
        take(framer.push(chunk));
      }
      take(framer.end());
      if (records === 0) return { records: 0, bytes: 0 };
      await new Promise<void>((resolve, reject) => {
        if (this.closed) return reject(new ShuttingDownError());
        this.queue.push({ bufs, offsets, records, bytes, resolve, reject });
        this.run();
      });
      return { records, bytes };
    } finally {
      this.inflight -= reserved;
    }
  }

  private run(): void {
    this.running ??= Promise.resolve().then(() => this.commitLoop());
  }

  /** Group commit: everything queued meanwhile goes out in one writev + one fsync. */
  private async commitLoop(): Promise<void> {
    while (this.queue.length > 0) {
      const group = this.queue;
      this.queue = [];
      const bufs: Buffer[] = [];
      let records = 0;
      for (const b of group) {
        // Stamped here, in write order, so the shared segment is sorted by ULID.
        b.bufs.forEach((buf, i) => {
          stampUlids(buf, b.offsets[i], this.ulids);
          bufs.push(buf);
        });
        records += b.records;
      }
      try {
        await this.writer.write(bufs, records, true);
        for (const b of group) b.resolve();
      } catch (err) {
        for (const b of group) b.reject(err);
        // A failed writer stays failed; later requests get a fresh one (and a fresh segment).
        await this.writer.close();
        this.writer = this.ctx.writer();
      }
    }
    this.running = null;
  }

  /** Refuses new writes, lets queued ones finish, flushes the shared segment. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.running) await this.running;
    await this.writer.close();
  }
}

/**
 * Reads and discards what is left of a refused body, up to `limit` bytes or `timeoutMs`, so the
 * client reads our error instead of a connection reset (closing a socket with unread input makes
 * the kernel send RST). Returns false if the body was not finished: close the connection then.
 */
export async function drainBody(req: IncomingMessage, limit: number, timeoutMs = 5000): Promise<boolean> {
  if (req.complete || req.readableEnded) return true;
  const declared = Number(req.headers['content-length'] ?? Number.NaN);
  if (declared > limit) return false;
  return await new Promise<boolean>((resolve) => {
    let seen = 0;
    const done = (ok: boolean) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onEnd);
      if (!ok) req.pause();
      resolve(ok);
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > limit) done(false);
    };
    const onEnd = () => done(req.complete);
    const timer = setTimeout(() => done(false), timeoutMs);
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onEnd);
    req.resume();
  });
}

/** `?topic=` → a validated topic, or undefined to use the node's topic mode. */
export function topicParam(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !isValidTopic(value)) throw new InvalidTopicError(String(value));
  return value;
}
