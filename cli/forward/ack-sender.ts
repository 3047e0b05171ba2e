// Acked forwarding (`-ack`): records are batched (by count, bytes and time) and POSTed to
// `/ingest/write` on an ingester's API; the ingester answers 200 `{records, bytes}` only after the
// records are fsynced. A batch stays ours until that answer: any failure (connection, timeout,
// 5xx) sends the same batch again, to the next target after a backoff. So delivery is
// at-least-once: nothing acknowledged is lost, and a batch whose answer was lost appears twice.
// Batches go one at a time, which keeps records in order.
//
// Names are resolved for every new connection, not once: each target has its own keep-alive agent
// whose sockets are created by resolving the target afresh (`+dns`, `+dnssrv`, …), so a reconnect
// (after a failure, or when the ingester closed an idle keep-alive socket) follows DNS.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { joinHostPort } from '../../shared/addr.ts';
import { OklogError } from '../../shared/errors.ts';
import type { Logger } from '../common.ts';
import { type Backoff, sleep } from './backoff.ts';
import { type RecordBuffer, splitBlock } from './buffer.ts';
import type { Block } from './line-splitter.ts';
import type { ForwardMetrics } from './metrics.ts';
import { Retrying } from './retrying.ts';
import type { Endpoint, Target, TargetRing } from './targets.ts';
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

type CreateConnection = (
  options: Record<string, unknown>,
  cb: (err: Error | null, socket?: Duplex) => void,
) => void;

/**
 * A keep-alive agent for one target whose every new socket resolves the target first. Node's
 * Agent accepts a `createConnection` that answers through its callback, so the lookup can be
 * asynchronous; a reused keep-alive socket does not resolve (it is already connected).
 */
function targetAgent(
  target: Target,
  resolve: (t: Target) => Promise<Endpoint>,
  onResolved: (ep: Endpoint) => void,
): http.Agent {
  const secure = target.proto === 'https';
  const agent = secure ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  const create: CreateConnection = (options, cb) => {
    resolve(target).then(
      (ep) => {
        onResolved(ep);
        const where = { host: ep.host, port: ep.port, family: ep.family || undefined };
        let socket: net.Socket;
        try {
          socket = secure
            ? tls.connect({
                ...options,
                ...where,
                // The certificate names the host we were given, or the SRV/PTR name we found.
                servername: net.isIP(ep.host) ? (options.servername as string | undefined) : ep.host,
              })
            : net.connect({ ...options, ...where });
        } catch (err) {
          // A synchronous throw (bad options) would otherwise be an unhandled rejection here.
          cb(err as Error);
          return;
        }
        cb(null, socket);
      },
      (err: Error) => cb(err),
    );
  };
  (agent as unknown as { createConnection: CreateConnection }).createConnection = create;
  return agent;
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
  /** Stop with GaveUpError once no batch was acknowledged for this long (ms; 0: never). */
  giveUpMs?: number;
}

interface AckReply {
  records?: number;
  bytes?: number;
}

export class AckSender {
  private queue: Block[] = [];
  private readonly abort = new AbortController();
  private readonly aborted = onAbort(this.abort.signal);
  private readonly agents = new Map<Target, http.Agent>();
  /** Where each target's latest connection went, for log and error lines. */
  private readonly resolved = new Map<Target, Endpoint>();
  private readonly retrying: Retrying;
  private warnedCount = false;
  /** Records that could not be sent because a single record was too large for the ingester. */
  droppedTooLarge = 0;
  /** Acked writes are confirmed one by one: nothing is ever written but unconfirmed. */
  readonly unconfirmedRecords = 0;

  constructor(private readonly o: AckSenderOptions) {
    this.retrying = new Retrying({
      log: o.log,
      targets: o.targets.size,
      giveUpMs: o.giveUpMs ?? 0,
      message: 'batch not acknowledged; will resend',
    });
  }

  /** Records not yet acknowledged (buffered or in the batch being sent). */
  get pendingRecords(): number {
    return this.o.buffer.records + this.queue.reduce((n, b) => n + b.records, 0);
  }

  private agentFor(t: Target): http.Agent {
    let a = this.agents.get(t);
    if (!a) {
      a = targetAgent(
        t,
        (x) => this.o.targets.resolveTarget(x),
        (ep) => this.resolved.set(t, ep),
      );
      this.agents.set(t, a);
    }
    return a;
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
      for (const a of this.agents.values()) a.destroy();
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
        await this.post(target, batch);
        this.queue.shift();
        if (attempts === 0) {
          metrics.records.inc(batch.records);
          metrics.bytes.inc(batch.data.length);
        }
        metrics.ackedBatches.inc();
        backoff.reset();
        this.retrying.success(target.raw);
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
        // Logged at most every 10 s: a down ingester fails every second.
        this.retrying.failure(target.raw, err, { records: batch.records, attempt: attempts });
        if (this.retrying.expired) throw this.retrying.gaveUp('no batch acknowledged', this.pendingRecords);
        // Drop this target's sockets so its next use reconnects and resolves again, and try the
        // next ingester, after a pause.
        this.agents.get(target)?.destroy();
        log.debug('will resend batch', { target: target.raw, attempt: attempts });
        targets.rotate();
        await sleep(this.retrying.capSleep(backoff.next()), this.abort.signal);
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

  private post(target: Target, batch: Block): Promise<void> {
    const path = `/ingest/write${this.o.topic ? `?topic=${encodeURIComponent(this.o.topic)}` : ''}`;
    const transport = target.proto === 'https' ? https : http;
    const agent = this.agentFor(target);
    const host = target.host === '' ? '127.0.0.1' : target.host;
    const describe = () => {
      const ep = this.resolved.get(target);
      const at = joinHostPort(ep?.host ?? host, ep?.port ?? target.port);
      return `POST ${target.proto}://${at}/ingest/write`;
    };
    return new Promise((resolve, reject) => {
      // host/port name the target (the Host header, the agent's pool); the agent's sockets go to
      // wherever it resolves to now.
      const req = transport.request({
        host,
        port: target.port,
        path,
        method: 'POST',
        agent,
        signal: this.abort.signal,
        timeout: this.o.timeoutMs,
        headers: { 'content-type': 'text/plain', 'content-length': batch.data.length },
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.o.timeoutMs}ms`)));
      req.on('error', (err) => reject(new RetryableError(`${describe()}: ${err.message}`)));
      req.on('response', (res) => {
        const where = describe();
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
