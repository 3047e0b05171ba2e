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
// - after a successful gather the next segment is asked for at once (the delay is applied when an
//   ingester had nothing or failed), so a backlog drains at network speed, not 10 segments/s.
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import { describeError, RemoteError } from '../../shared/errors.ts';
import type { Peers } from '../cluster/peers.ts';
import { Aggregate } from './aggregate.ts';
import { InsufficientStoresError, SegmentRejectedError } from './consumer-errors.ts';
import { type ConsumerHttp, type ConsumerHttpOptions, NodeConsumerHttp } from './http-client.ts';
import { LogLimiter } from './log-limiter.ts';
import { Placement } from './placement.ts';
import { FailureMemo, Quarantine, type QuarantineOptions, segmentFingerprint } from './quarantine.ts';

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
    this.maxSegmentBytes = opts.maxSegmentBytes ?? Math.max(opts.targetSize, 512 * 1024 * 1024);
    this.insufficientBackoffMs = opts.insufficientBackoffMs ?? 1000;
    this.memo = new FailureMemo(this.now);
    this.limiter = new LogLimiter(opts.warnIntervalMs ?? 30_000, this.now);
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

  /** One state function; true when the next step should follow without the delay. */
  private async step(): Promise<boolean> {
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
    const stores = this.peers.current('store');
    if (stores.length < this.rf) {
      this.tooFewStores(stores.length);
      if (this.claims.length > 0) await this.finish(false, 'insufficient_stores');
      await this.pause(this.insufficientBackoffMs);
      return false;
    }
    if (this.storesShort) {
      this.storesShort = false;
      this.limiter.reset('stores');
      this.logger.info(
        { stores: stores.length, replicationFactor: this.rf },
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
    try {
      const r = await this.http.read(
        `${base}/read?id=${encodeURIComponent(id)}`,
        this.maxSegmentBytes,
        this.stopper.signal,
      );
      if (r.status !== 200)
        throw new RemoteError(`status ${r.status}: ${snippet(r.body)}`, { status: r.status });
      body = r.body;
      reopen = r.reopen;
    } catch (err) {
      // OK Log failed the whole batch here; only this claim is affected, so only it goes back.
      this.gatherErrors++;
      if (!this.stopping) this.warnPeer(ingester, 'read', err);
      this.release(claim);
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
      await this.rejected(claim, body, err);
      return true;
    }
    this.activeSince ??= this.now();
    this.metrics.consumedSegments.inc();
    this.metrics.consumedBytes.inc(body.length);
    return true;
  }

  /** A segment that cannot be merged: fail it back, or quarantine it on its repeated failure. */
  private async rejected(claim: Claim, body: Buffer, err: SegmentRejectedError): Promise<void> {
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
      this.logger.warn(
        ctx,
        this.quarantine === null
          ? 'store: ingest segment cannot be merged; failed back to its ingester (no quarantine folder configured)'
          : 'store: ingest segment cannot be merged; failed back to its ingester (quarantined if it fails again)',
      );
      await this.settle(claim, 'failed');
      return;
    }
    let path: string;
    try {
      path = await this.quarantine.save(claim.ingester, key, body);
    } catch (saveErr) {
      this.logger.error(
        { ...ctx, err: describeError(saveErr), dir: this.quarantine.dir },
        'store: could not write poison segment to the quarantine folder; failed back to its ingester',
      );
      await this.settle(claim, 'failed');
      return;
    }
    this.memo.forget(key);
    this.metrics.quarantinedSegments.inc();
    this.logger.error(
      { ...ctx, path },
      'store: ingest segment quarantined after repeated merge failures; committed (removed) at its ingester',
    );
    await this.settle(claim, 'commit');
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
    if (stores.length < this.rf) {
      this.tooFewStores(stores.length);
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
