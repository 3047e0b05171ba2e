// SegmentConsumer: moves records from the ingest tier to the store tier with OK Log's
// three-stage transaction (reference §4.1): GATHER segments from random ingesters into an
// aggregate, REPLICATE the merged aggregate to `replication-factor` store nodes, then COMMIT every
// claim at its ingester, or FAIL every claim (the segments go back and are retried). A record is
// deleted at the ingester only after enough store nodes have it durably; partial failures give
// duplicates (cleaned up by query dedupe and compaction), never loss.
//
// Beyond OK Log (see docs/CONSUMER.md):
// - placement is deterministic: a hash ring over the live store nodes keyed by the aggregate's
//   first ULID; a failing node is replaced by the next distinct node along the ring;
// - fewer live store nodes than the factor: nothing is taken (or committed), with a warning at a
//   bounded rate, never silent under-replication;
// - the upload is streamed and its answer waited for only once it is sent (http-client.ts);
// - a segment that cannot be merged is failed back alone (the batch goes on); the second time
//   the same content fails it is quarantined and committed, so it no longer blocks its ingester;
//   a segment too large to read into memory is treated alike, found from its size before it is
//   read and streamed to the quarantine file; when the quarantine file cannot be written the
//   claim is held back for a growing while (the ingester's backlog goes on meanwhile) and the
//   error is logged at a bounded rate;
// - one failure memo per node, shared by its consumers, so a poison segment is quarantined on
//   its second failure whichever consumer saw the first;
// - after a successful gather the next segment is asked for at once (the delay is applied when an
//   ingester had nothing or failed), so a backlog drains at network speed, not 10 segments/s.
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import { describeError, RemoteError } from '../../shared/errors.ts';
import type { Peers } from '../cluster/peers.ts';
import { Aggregate } from './aggregate.ts';
import { InsufficientStoresError, SegmentRejectedError, SegmentTooLargeError } from './consumer-errors.ts';
import {
  type ConsumerHttp,
  type ConsumerHttpOptions,
  NodeConsumerHttp,
  type SpillSink,
} from './http-client.ts';
import { maxSegmentBytesFor } from './limits.ts';
import { LogLimiter } from './log-limiter.ts';
import { Placement } from './placement.ts';
import {
  FailureMemo,
  Quarantine,
  type QuarantineOptions,
  type QuarantineSink,
  segmentFingerprint,
} from './quarantine.ts';

export interface ConsumerMetrics {
  consumedSegments: Counter;
  consumedBytes: Counter;
  /**
   * Shared with `POST /store/replicate` (store A): the consumer counts `direction="egress"` (one
   * per copy successfully sent, with the bytes sent), the handler `direction="ingress"`.
   */
  replicatedSegments: Counter<'direction'>;
  replicatedBytes: Counter<'direction'>;
  rejectedSegments: Counter;
  quarantinedSegments: Counter;
  underReplicated: Counter;
  failedBatches: Counter<'reason'>;
}

/** Reuses a metric someone registered first (store metrics share the replicated_* pair). */
function shared<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

/**
 * The consumer's metrics, registered on `registry` once per node (every consumer of the node
 * shares them). The replicated_* counters are exported here for `/store/replicate`'s ingress side.
 */
export function createConsumerMetrics(registry: Registry): ConsumerMetrics {
  const registers = [registry];
  const counter = <L extends string>(name: string, help: string, labelNames: L[] = []) =>
    shared(registry, name, () => new Counter<L>({ name, help, labelNames, registers }));
  return {
    consumedSegments: counter('oklog_store_consumed_segments', 'Segments consumed from ingest nodes.'),
    consumedBytes: counter('oklog_store_consumed_bytes', 'Bytes consumed from ingest nodes.'),
    replicatedSegments: counter(
      'oklog_store_replicated_segments',
      'Segments replicated, by direction i.e. ingress or egress.',
      ['direction'],
    ),
    replicatedBytes: counter(
      'oklog_store_replicated_bytes',
      'Segments replicated, by direction i.e. ingress or egress, in bytes.',
      ['direction'],
    ),
    rejectedSegments: counter(
      'oklog_store_consumer_rejected_segments_total',
      'Ingest segments that could not be merged (malformed or unsorted records).',
    ),
    quarantinedSegments: counter(
      'oklog_store_quarantined_segments_total',
      'Ingest segments written to the quarantine folder after repeated merge failures.',
    ),
    underReplicated: counter(
      'oklog_store_consumer_underreplicated_total',
      'Times the consumer took nothing, or failed a batch, because fewer live store nodes than the replication factor were known.',
    ),
    failedBatches: counter(
      'oklog_store_consumer_failed_batches_total',
      'Gathered batches failed back to their ingesters, by reason.',
      ['reason'],
    ),
  };
}

export interface SegmentConsumerOptions {
  peers: Peers;
  replicationFactor: number;
  /** Replicate once the aggregate holds this many bytes. */
  targetSize: number;
  /** Replicate once the aggregate is this old (ms since its first segment). */
  targetAge: number;
  /** Pause (ms) after a step that got nothing (OK Log's tick). */
  delay: number;
  logger: Logger;
  metrics: ConsumerMetrics;
  now?: () => number;
  /** Uniform in [0, 1), like Math.random. */
  random?: () => number;
  /** Where poison segments go; without it they are failed back every time (OK Log's behaviour). */
  quarantine?: QuarantineOptions;
  /** Merge failures of the same content before it is quarantined (default 2). */
  quarantineAfter?: number;
  /**
   * Failures remembered per segment; pass one memo to every consumer of a node, so the count is
   * per node, not per consumer (default: the consumer's own).
   */
  memo?: FailureMemo;
  /**
   * After a quarantine file could not be written, the claim is held back this long (ms, default
   * 1 s) before it is failed back, doubling on every further failure up to `quarantineRetryMaxMs`.
   */
  quarantineRetryMs?: number;
  /**
   * Longest hold (ms, default 30 s): below the ingest nodes' pending timeout (1 min by default),
   * so the ingester does not take the claim back itself meanwhile.
   */
  quarantineRetryMaxMs?: number;
  /** An HTTP client, or options for the default one. */
  http?: ConsumerHttp | ConsumerHttpOptions;
  /** Largest ingest segment read into memory (default max(targetSize, 512 MiB)). */
  maxSegmentBytes?: number;
  /** Pause (ms) after finding too few store nodes (OK Log: 1 s). */
  insufficientBackoffMs?: number;
  /** Repeated warnings are logged at most this often (ms, default 30 s). */
  warnIntervalMs?: number;
}

interface Claim {
  ingester: string;
  id: string;
}

/** Memo key of a segment too large to read (its bytes, hence its hash, are never in memory). */
function oversizeKey(ingester: string, size: number): string {
  return `${ingester} oversize ${size}`;
}

/** Claim ids are UUIDs; anything else in a 200 body means the peer is not an ingest node. */
const CLAIM_ID = /^[A-Za-z0-9_-]{1,128}$/;

function isHttp(x: SegmentConsumerOptions['http']): x is ConsumerHttp {
  return x !== undefined && typeof (x as ConsumerHttp).upload === 'function';
}

function snippet(body: Buffer): string {
  return body.toString('utf8', 0, Math.min(body.length, 200)).trim();
}

export class SegmentConsumer {
  private readonly peers: Peers;
  private readonly rf: number;
  private readonly targetSize: number;
  private readonly targetAge: number;
  private readonly delayMs: number;
  private readonly logger: Logger;
  private readonly metrics: ConsumerMetrics;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly http: ConsumerHttp;
  private readonly ownsHttp: boolean;
  private readonly quarantine: Quarantine | null;
  private readonly quarantineAfter: number;
  private readonly maxSegmentBytes: number;
  private readonly insufficientBackoffMs: number;
  private readonly placement = new Placement();
  private readonly memo: FailureMemo;
  private readonly limiter: LogLimiter;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  /** Hold of the next claim parked after a failed quarantine write (grows, reset on success). */
  private retryMs: number;
  /**
   * Poison claims whose quarantine file could not be written: held (pending at their ingester,
   * so it hands out its next segments meanwhile) until `until`, then failed back.
   */
  private parked: { claim: Claim; until: number }[] = [];

  // Transaction state (reference §4.1): claims taken, the aggregate, its age, gather errors.
  private claims: Claim[] = [];
  private agg = new Aggregate();
  private activeSince: number | null = null;
  private gatherErrors = 0;
  /** Too few store nodes were seen last time (so their return is logged). */
  private storesShort = false;

  private readonly stopper = new AbortController();
  private loop: Promise<void> | null = null;
  private stopped: Promise<void> | null = null;

  constructor(opts: SegmentConsumerOptions) {
    if (!Number.isSafeInteger(opts.replicationFactor) || opts.replicationFactor < 1)
      throw new RangeError(`replication factor must be ≥ 1, got ${opts.replicationFactor}`);
    this.peers = opts.peers;
    this.rf = opts.replicationFactor;
    this.targetSize = opts.targetSize;
    this.targetAge = opts.targetAge;
    this.delayMs = Math.max(1, opts.delay);
    this.logger = opts.logger;
    this.metrics = opts.metrics;
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.ownsHttp = !isHttp(opts.http);
    this.http = isHttp(opts.http) ? opts.http : new NodeConsumerHttp(opts.http);
    this.quarantine = opts.quarantine ? new Quarantine(opts.quarantine, this.now) : null;
    this.quarantineAfter = Math.max(1, opts.quarantineAfter ?? 2);
    this.maxSegmentBytes = opts.maxSegmentBytes ?? maxSegmentBytesFor(opts.targetSize);
    this.insufficientBackoffMs = opts.insufficientBackoffMs ?? 1000;
    this.memo = opts.memo ?? new FailureMemo(this.now);
    this.limiter = new LogLimiter(opts.warnIntervalMs ?? 30_000, this.now);
    this.retryMinMs = Math.max(1, opts.quarantineRetryMs ?? 1000);
    this.retryMaxMs = Math.max(this.retryMinMs, opts.quarantineRetryMaxMs ?? 30_000);
    this.retryMs = this.retryMinMs;
  }

  start(): void {
    if (this.loop !== null || this.stopped !== null) return;
    this.loop = this.run();
  }

  /**
   * Stops stepping: requests in flight to ingesters (next, read) and stores (replicate) are
   * aborted, a commit in flight completes, and every claim still outstanding is failed back.
   */
  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.stopper.abort();
      await this.loop;
      if (this.claims.length > 0) await this.finish(false, 'stopping');
      await this.unpark(Number.POSITIVE_INFINITY);
      if (this.ownsHttp) this.http.close();
    })();
    return this.stopped;
  }

  private get stopping(): boolean {
    return this.stopper.signal.aborted;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      let again = false;
      try {
        again = await this.step();
      } catch (err) {
        this.logger.error({ err: describeError(err) }, 'store: consumer step failed');
      }
      if (!again) await this.pause(this.delayMs);
    }
  }

  private async pause(ms: number): Promise<void> {
    if (this.stopping) return;
    await delay(ms, undefined, { signal: this.stopper.signal }).catch(() => {});
  }

  /** Fails back the parked claims whose hold ended by `t`. */
  private async unpark(t: number): Promise<void> {
    if (this.parked.length === 0) return;
    const due = this.parked.filter((p) => p.until <= t);
    if (due.length === 0) return;
    this.parked = this.parked.filter((p) => p.until > t);
    await Promise.all(due.map((p) => this.settle(p.claim, 'failed')));
  }

  /** One state function; true when the next step should follow without the delay. */
  private async step(): Promise<boolean> {
    await this.unpark(this.now());
    const ingesters = this.peers.current('ingest');
    const n = ingesters.length;
    // Gather exit: once there were as many failed (or empty) asks as ingesters since the last
    // transaction, what there is is replicated rather than waiting on for the target. OK Log
    // waited for more than two per ingester: 300 ms more latency for one ingester, for nothing.
    if (this.gatherErrors >= Math.max(1, n)) {
      this.gatherErrors = 0;
      if (this.claims.length > 0) {
        await this.flush();
        return false;
      }
    }
    if (
      this.claims.length > 0 &&
      (this.agg.bytes >= this.targetSize ||
        (this.activeSince !== null && this.now() - this.activeSince >= this.targetAge))
    ) {
      await this.flush();
      return true;
    }
    if (n === 0) return false;
    const stores = distinct(this.peers.current('store'));
    if (stores < this.rf) {
      this.tooFewStores(stores);
      if (this.claims.length > 0) await this.finish(false, 'insufficient_stores');
      await this.pause(this.insufficientBackoffMs);
      return false;
    }
    if (this.storesShort) {
      this.storesShort = false;
      this.limiter.reset('stores');
      this.logger.info(
        { stores, replicationFactor: this.rf },
        'store: enough live store nodes again; consuming',
      );
    }
    const i = Math.min(n - 1, Math.floor(this.random() * n));
    return this.gather(ingesters[i]);
  }

  /** Claims and reads one segment from `ingester` into the aggregate. */
  private async gather(ingester: string): Promise<boolean> {
    const base = `http://${ingester}/ingest`;
    let id: string;
    try {
      const r = await this.http.control('GET', `${base}/next`, this.stopper.signal);
      if (r.status === 404) {
        this.gatherErrors++; // nothing to give: normal
        return false;
      }
      if (r.status !== 200)
        throw new RemoteError(`status ${r.status}: ${snippet(r.body)}`, { status: r.status });
      id = r.body.toString('utf8').trim();
      if (!CLAIM_ID.test(id)) throw new RemoteError(`not a claim id: ${JSON.stringify(snippet(r.body))}`);
    } catch (err) {
      if (this.stopping) return false;
      this.gatherErrors++;
      this.warnPeer(ingester, 'next', err);
      return false;
    }
    const claim: Claim = { ingester, id };
    this.claims.push(claim);

    let body: Buffer;
    let reopen: (() => AsyncIterable<Buffer>) | undefined;
    // A segment too large for memory that failed before goes to a quarantine file as it is read.
    let sink: QuarantineSink | null = null;
    let sinkError: unknown = null;
    let spillSize = 0;
    const spill = async (size: number): Promise<SpillSink | null> => {
      spillSize = size;
      if (this.quarantine === null) return null;
      if (this.memo.count(oversizeKey(ingester, size)) + 1 < this.quarantineAfter) return null;
      try {
        sink = await this.quarantine.open(ingester);
      } catch (err) {
        sinkError = err;
        return null;
      }
      const s = sink;
      return {
        write: (chunk) =>
          s.write(chunk).catch((err: unknown) => {
            sinkError = err;
            throw err;
          }),
      };
    };
    try {
      const r = await this.http.read(
        `${base}/read?id=${encodeURIComponent(id)}`,
        this.maxSegmentBytes,
        this.stopper.signal,
        spill,
      );
      if (r.status !== 200)
        throw new RemoteError(`status ${r.status}: ${snippet(r.body)}`, { status: r.status });
      if (r.spilled !== undefined) {
        this.release(claim);
        await this.quarantineSpilled(claim, r.spilled, sink as QuarantineSink | null);
        return true;
      }
      body = r.body;
      reopen = r.reopen;
    } catch (err) {
      this.release(claim);
      await (sink as QuarantineSink | null)?.abort();
      if (sinkError !== null && !this.stopping) {
        this.quarantineFailed(
          claim,
          { ingester, bytes: spillSize, maxBytes: this.maxSegmentBytes },
          sinkError,
        );
        return true;
      }
      if (err instanceof SegmentTooLargeError && !this.stopping) return this.tooLarge(claim, err);
      // OK Log failed the whole batch here; only this claim is affected, so only it goes back.
      this.gatherErrors++;
      if (!this.stopping) this.warnPeer(ingester, 'read', err);
      await this.settle(claim, 'failed');
      return false;
    }

    try {
      this.agg.add(body, reopen);
    } catch (err) {
      // Whatever went wrong, this claim's records are not in the aggregate: it must never be
      // committed with the batch.
      this.release(claim);
      if (!(err instanceof SegmentRejectedError)) {
        await this.settle(claim, 'failed');
        throw err;
      }
      return this.rejected(claim, body, err);
    }
    this.activeSince ??= this.now();
    this.metrics.consumedSegments.inc();
    this.metrics.consumedBytes.inc(body.length);
    return true;
  }

  /**
   * A segment that cannot be merged: fail it back, or quarantine it on its repeated failure.
   * True when the next step may follow at once (the ingester's next segment is another one).
   */
  private async rejected(claim: Claim, body: Buffer, err: SegmentRejectedError): Promise<boolean> {
    this.metrics.rejectedSegments.inc();
    const key = segmentFingerprint(claim.ingester, body);
    const attempt = this.memo.fail(key);
    const ctx = {
      ingester: claim.ingester,
      bytes: body.length,
      reason: err.message,
      code: err.code,
      attempt,
    };
    if (this.quarantine === null || attempt < this.quarantineAfter) {
      this.failedBack(key, ctx);
      await this.settle(claim, 'failed');
      return false; // the ingester hands this segment out again first: not at once
    }
    let path: string;
    try {
      path = await this.quarantine.save(claim.ingester, key, body);
    } catch (saveErr) {
      this.quarantineFailed(claim, ctx, saveErr);
      return true;
    }
    this.quarantined(key, { ...ctx, path });
    await this.settle(claim, 'commit');
    return true;
  }

  /** A segment announced larger than the consumer reads into memory (nothing of it was read). */
  private async tooLarge(claim: Claim, err: SegmentTooLargeError): Promise<boolean> {
    this.metrics.rejectedSegments.inc();
    const size = Number(err.context.size);
    const key = oversizeKey(claim.ingester, size);
    const attempt = this.memo.fail(key);
    this.failedBack(key, {
      ingester: claim.ingester,
      bytes: size,
      maxBytes: this.maxSegmentBytes,
      reason: err.message,
      code: err.code,
      attempt,
    });
    await this.settle(claim, 'failed');
    return false;
  }

  /** An oversized segment was streamed into its quarantine file: make it durable, then commit. */
  private async quarantineSpilled(claim: Claim, bytes: number, sink: QuarantineSink | null): Promise<void> {
    const key = oversizeKey(claim.ingester, bytes);
    const ctx = {
      ingester: claim.ingester,
      bytes,
      maxBytes: this.maxSegmentBytes,
      code: 'OKLOG_ERR_SEGMENT_TOO_LARGE',
      attempt: this.memo.count(key) + 1,
    };
    this.metrics.rejectedSegments.inc();
    let path: string;
    try {
      if (sink === null) throw new Error('no quarantine file');
      path = await sink.finish();
    } catch (err) {
      await sink?.abort();
      this.quarantineFailed(claim, ctx, err);
      return;
    }
    this.quarantined(key, { ...ctx, path });
    await this.settle(claim, 'commit');
  }

  private failedBack(key: string, ctx: Record<string, unknown>): void {
    // Bounded: the same segment comes back every tick when there is no quarantine folder.
    const suppressed = this.limiter.take(`rejected ${key}`);
    if (suppressed === null) return;
    this.logger.warn(
      { ...ctx, suppressed },
      this.quarantine === null
        ? 'store: ingest segment cannot be consumed; failed back to its ingester (no quarantine folder configured)'
        : 'store: ingest segment cannot be consumed; failed back to its ingester (quarantined if it fails again)',
    );
  }

  private quarantined(key: string, ctx: Record<string, unknown>): void {
    this.memo.forget(key);
    this.retryMs = this.retryMinMs;
    this.limiter.reset('quarantine');
    this.metrics.quarantinedSegments.inc();
    this.logger.error(
      ctx,
      'store: ingest segment quarantined after repeated merge failures; committed (removed) at its ingester',
    );
  }

  /**
   * The quarantine file could not be written. Failing the claim back at once would have its
   * ingester hand the same segment out again first (its mtime is old), to fail again, forever:
   * the claim is parked instead, so the ingester gives out its next segments meanwhile, and
   * failed back later, after a hold that doubles on every failure (up to the max, below the
   * ingesters' pending timeout). Logged at most every warn interval.
   */
  private quarantineFailed(claim: Claim, ctx: Record<string, unknown>, err: unknown): void {
    const hold = this.retryMs;
    this.retryMs = Math.min(this.retryMaxMs, this.retryMs * 2);
    this.parked.push({ claim, until: this.now() + hold });
    const suppressed = this.limiter.take('quarantine');
    if (suppressed === null) return;
    this.logger.error(
      { ...ctx, err: describeError(err), dir: this.quarantine?.dir, holdMs: hold, suppressed },
      'store: could not write poison segment to the quarantine folder; held back, then failed back to its ingester',
    );
  }

  /** Replicate then commit, or fail: the end of a transaction. */
  private async flush(): Promise<void> {
    const agg = this.agg;
    const first = agg.firstUlid;
    if (first === null) {
      await this.finish(true, 'empty'); // only empty segments: nothing to store
      return;
    }
    const stores = this.peers.current('store');
    if (distinct(stores) < this.rf) {
      this.tooFewStores(distinct(stores));
      await this.finish(false, 'insufficient_stores');
      return;
    }
    const replicas = await this.replicate(agg, first, this.placement.order(first, stores));
    await this.finish(replicas >= this.rf, this.stopping ? 'stopping' : 'replication');
  }

  /**
   * Sends the aggregate to the first `rf` nodes of the ring walk, in parallel; each failure is
   * replaced by the next node along the ring. Returns the number of nodes that stored it.
   */
  private async replicate(agg: Aggregate, first: string, order: string[]): Promise<number> {
    const stored: string[] = [];
    const failed: { node: string; reason: string }[] = [];
    let next = 0;
    while (stored.length < this.rf && next < order.length && !this.stopping) {
      const batch = order.slice(next, next + this.rf - stored.length);
      next += batch.length;
      const results = await Promise.all(batch.map((node) => this.send(node, agg)));
      batch.forEach((node, i) => {
        const reason = results[i];
        if (reason === null) stored.push(node);
        else failed.push({ node, reason });
      });
    }
    const ctx = { first, records: agg.records, bytes: agg.bytes, replicationFactor: this.rf, stored, failed };
    if (stored.length >= this.rf) {
      if (failed.length > 0)
        this.logger.warn(ctx, 'store: replicated, with stand-ins for failed store nodes');
      else this.logger.debug(ctx, 'store: replicated');
    } else if (!this.stopping) {
      this.logger.error(ctx, 'store: replication failed; segments go back to their ingesters');
    }
    return stored.length;
  }

  /** One copy; null on success, else why not. */
  private async send(node: string, agg: Aggregate): Promise<string | null> {
    let sent = 0;
    try {
      const r = await this.http.upload(
        `http://${node}/store/replicate`,
        agg.merged(),
        this.stopper.signal,
        (n) => {
          sent += n;
        },
      );
      if (r.status !== 200) return `status ${r.status}: ${snippet(r.body)}`;
      this.metrics.replicatedSegments.inc({ direction: 'egress' });
      this.metrics.replicatedBytes.inc({ direction: 'egress' }, sent);
      return null;
    } catch (err) {
      return describeError(err);
    }
  }

  /** Commits (success) or fails every claim, then resets the transaction. */
  private async finish(success: boolean, reason: string): Promise<void> {
    const claims = this.claims;
    this.claims = [];
    this.agg = new Aggregate();
    this.activeSince = null;
    this.gatherErrors = 0;
    if (!success) this.metrics.failedBatches.inc({ reason });
    await Promise.all(claims.map((c) => this.settle(c, success ? 'commit' : 'failed')));
  }

  /**
   * `POST /ingest/commit|failed?id=`. Not tied to stop(): a commit must be able to finish. Errors
   * are only logged: a lost commit means duplicates later, a lost fail the pending timeout.
   */
  private async settle(claim: Claim, action: 'commit' | 'failed'): Promise<void> {
    const url = `http://${claim.ingester}/ingest/${action}?id=${encodeURIComponent(claim.id)}`;
    try {
      const r = await this.http.control('POST', url);
      if (r.status === 404 && r.retried) {
        // Resent after a connection reset: the first attempt most likely did it already.
        this.logger.info(
          { ingester: claim.ingester, claim: claim.id, action },
          'store: claim unknown when resent after a connection reset (the first attempt was probably applied)',
        );
        return;
      }
      if (r.status !== 200)
        throw new RemoteError(`status ${r.status}: ${snippet(r.body)}`, { status: r.status });
    } catch (err) {
      this.logger.warn(
        { ingester: claim.ingester, claim: claim.id, err: describeError(err) },
        action === 'commit'
          ? 'store: commit failed (the segment will be consumed again: duplicates, removed by dedupe)'
          : 'store: failing a claim failed (the ingester returns it after its pending timeout)',
      );
    }
  }

  private release(claim: Claim): void {
    const i = this.claims.indexOf(claim);
    if (i >= 0) this.claims.splice(i, 1);
  }

  private tooFewStores(stores: number): void {
    this.storesShort = true;
    this.metrics.underReplicated.inc();
    const suppressed = this.limiter.take('stores');
    if (suppressed === null) return;
    const err = new InsufficientStoresError(stores, this.rf);
    this.logger.warn(
      { stores, replicationFactor: this.rf, code: err.code, suppressed },
      `store: fewer live store nodes (${stores}) than the replication factor (${this.rf}); not consuming, segments stay at the ingesters`,
    );
  }

  private warnPeer(ingester: string, what: string, err: unknown): void {
    const suppressed = this.limiter.take(`${ingester} ${what}`);
    const ctx = { ingester, err: describeError(err), suppressed };
    if (suppressed === null) this.logger.debug(ctx, `store: ingest ${what} failed`);
    else this.logger.warn(ctx, `store: ingest ${what} failed`);
  }
}

/** Store nodes counted by address: a restarted node can linger in gossip under its old name. */
function distinct(stores: readonly string[]): number {
  return new Set(stores).size;
}
