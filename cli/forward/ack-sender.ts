// Acked forwarding (`-ack`): records are batched (by count, bytes and time) and POSTed to
// `/ingest/write` on an ingester's API; the ingester answers 200 `{records, bytes}` only after the
// records are fsynced. A batch stays ours until that answer: any failure (connection, timeout,
// 5xx) sends the same batch again, to the next target after a backoff. So delivery is
// at-least-once: nothing acknowledged is lost, and a batch whose answer was lost appears twice.
// Batches go one at a time, which keeps records in order.
import http, { type Agent } from 'node:http';
import https from 'node:https';
import { joinHostPort } from '../../shared/addr.ts';
import { describeError, OklogError } from '../../shared/errors.ts';
import type { Logger } from '../common.ts';
import { type Backoff, sleep } from './backoff.ts';
import { type RecordBuffer, splitBlock } from './buffer.ts';
import type { Block } from './line-splitter.ts';
import type { ForwardMetrics } from './metrics.ts';
import type { Endpoint, TargetRing } from './targets.ts';
import { onAbort, onTimeout, waitAny } from './wait.ts';

/** The ingester refused a batch in a way a retry cannot fix (bad topic, no such endpoint). */
export class AckRejectedError extends OklogError {
  readonly status: number;
  constructor(message: string, status: number) {
    super(message, 'OKLOG_ERR_ACK_REJECTED', { status });
    this.name = 'AckRejectedError';
    this.status = status;
  }
}

/** A failed attempt worth retrying, with the reason for the log. */
class RetryableError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

export interface AckSenderOptions {
  targets: TargetRing;
  buffer: RecordBuffer;
  log: Logger;
  metrics: ForwardMetrics;
  backoff: Backoff;
  batchBytes: number;
  batchRecords: number;
  /** How long a partly filled batch waits for more records. */
  batchWaitMs: number;
  timeoutMs: number;
  /** `?topic=` for every batch ('' leaves it to the ingester's default). */
  topic: string;
}

interface AckReply {
  records?: number;
  bytes?: number;
}

export class AckSender {
  private queue: Block[] = [];
  private readonly abort = new AbortController();
  private readonly aborted = onAbort(this.abort.signal);
  private readonly agents = {
    http: new http.Agent({ keepAlive: true }),
    https: new https.Agent({ keepAlive: true }),
  };
  private endpoint: Endpoint | null = null;
  private warnedCount = false;
  /** Records that could not be sent because a single record was too large for the ingester. */
  droppedTooLarge = 0;

  constructor(private readonly o: AckSenderOptions) {}

  /** Records not yet acknowledged (buffered or in the batch being sent). */
  get pendingRecords(): number {
    return this.o.buffer.records + this.queue.reduce((n, b) => n + b.records, 0);
  }

  stop(): void {
    this.abort.abort();
  }

  /** Resolves 'done' once the input ended and every batch is acknowledged; throws AckRejectedError. */
  async run(): Promise<'done' | 'stopped'> {
    try {
      while (!this.abort.signal.aborted) {
        const batch = await this.nextBatch();
        if (batch === null) return this.abort.signal.aborted ? 'stopped' : 'done';
        this.queue = [batch];
        await this.deliver();
      }
      return 'stopped';
    } finally {
      this.agents.http.destroy();
      this.agents.https.destroy();
    }
  }

  /** Waits for records, then up to `batchWaitMs` for a full batch (unless input ended). */
  private async nextBatch(): Promise<Block | null> {
    const { buffer, batchBytes, batchRecords, batchWaitMs } = this.o;
    while (buffer.empty) {
      if (buffer.ended || this.abort.signal.aborted) return null;
      await waitAny(buffer.onData, this.aborted);
    }
    const deadline = Date.now() + batchWaitMs;
    while (
      !buffer.ended &&
      !buffer.full &&
      buffer.bytes < batchBytes &&
      buffer.records < batchRecords &&
      Date.now() < deadline &&
      !this.abort.signal.aborted
    ) {
      await waitAny(buffer.onMore, onTimeout(deadline - Date.now()), this.aborted);
    }
    return buffer.take(batchBytes, batchRecords);
  }

  /** Sends `queue` until every block in it is acknowledged (or stop). */
  private async deliver(): Promise<void> {
    const { targets, backoff, log, metrics } = this.o;
    let attempts = 0;
    while (this.queue.length > 0 && !this.abort.signal.aborted) {
      const batch = this.queue[0];
      const target = targets.current;
      try {
        this.endpoint ??= await targets.resolve();
        await this.post(this.endpoint, target.proto, batch);
        this.queue.shift();
        if (attempts === 0) {
          metrics.records.inc(batch.records);
          metrics.bytes.inc(batch.data.length);
        }
        metrics.ackedBatches.inc();
        backoff.reset();
        attempts = 0;
      } catch (err) {
        if (this.abort.signal.aborted) return;
        if (err instanceof AckRejectedError) {
          if (err.status === 413) {
            this.tooLarge(batch, err);
            continue;
          }
          throw err;
        }
        attempts++;
        metrics.disconnects.inc();
        if (attempts === 1) metrics.resent.inc(batch.records);
        log.warn('batch not acknowledged; will resend', {
          target: target.raw,
          records: batch.records,
          attempt: attempts,
          err: describeError(err),
        });
        // Re-resolve, and try the next ingester, after a pause.
        this.endpoint = null;
        targets.rotate();
        await sleep(backoff.next(), this.abort.signal);
      }
    }
  }

  /** 413: split the batch and retry the halves; a single record that is too large is dropped. */
  private tooLarge(batch: Block, err: AckRejectedError): void {
    this.queue.shift();
    if (batch.records > 1) {
      const [a, b] = splitBlock(batch, Math.floor(batch.records / 2));
      this.queue.unshift(a, b);
      return;
    }
    this.droppedTooLarge++;
    this.o.metrics.dropped.inc({ reason: 'too_long' });
    this.o.log.warn('record rejected as too large by the ingester; dropped', {
      bytes: batch.data.length,
      err: err.message,
    });
  }

  private post(ep: Endpoint, proto: string, batch: Block): Promise<void> {
    const path = `/ingest/write${this.o.topic ? `?topic=${encodeURIComponent(this.o.topic)}` : ''}`;
    const transport = proto === 'https' ? https : http;
    const agent: Agent = proto === 'https' ? this.agents.https : this.agents.http;
    const where = `POST ${proto}://${joinHostPort(ep.host, ep.port)}/ingest/write`;
    return new Promise((resolve, reject) => {
      const req = transport.request({
        host: ep.host,
        port: ep.port,
        family: ep.family || undefined,
        path,
        method: 'POST',
        agent,
        signal: this.abort.signal,
        timeout: this.o.timeoutMs,
        headers: { 'content-type': 'text/plain', 'content-length': batch.data.length },
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.o.timeoutMs}ms`)));
      req.on('error', (err) => reject(new RetryableError(`${where}: ${err.message}`)));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => {
          if (n < 65536) chunks.push(c);
          n += c.length;
        });
        res.on('error', (err) => reject(new RetryableError(`${where}: ${err.message}`)));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8').trim();
          const status = res.statusCode ?? 0;
          if (status === 200) {
            this.checkReply(text, batch);
            resolve();
            return;
          }
          const msg = `${where}: ${status} ${res.statusMessage ?? ''}${text ? `: ${text.split('\n')[0]}` : ''}`;
          // 408/429/5xx are passing conditions; other 4xx mean this request can never succeed.
          if (status >= 400 && status < 500 && status !== 408 && status !== 429)
            reject(new AckRejectedError(msg, status));
          else reject(new RetryableError(msg, status));
        });
      });
      req.end(batch.data);
    });
  }

  private checkReply(text: string, batch: Block): void {
    let reply: AckReply = {};
    try {
      reply = JSON.parse(text) as AckReply;
    } catch {
      // A 200 is the acknowledgement; the body is informational.
    }
    if (typeof reply.records === 'number' && reply.records !== batch.records && !this.warnedCount) {
      this.warnedCount = true;
      this.o.log.warn('ingester acknowledged a different record count than sent', {
        sent: batch.records,
        acknowledged: reply.records,
      });
    }
  }
}
