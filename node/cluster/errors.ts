// Typed errors of the gossip layer. Decoding errors carry a `reason`, the label of the
// `oklog_cluster_dropped_packets_total` counter, so every dropped packet is counted by cause.
import { InvalidArgumentError, OklogError } from '../../shared/errors.ts';

export type DropReason =
  | 'truncated'
  | 'malformed'
  | 'too_large'
  | 'crc'
  | 'decrypt'
  | 'label'
  | 'unknown_type'
  | 'compression'
  | 'unexpected'
  /** An inbound stream would take the node over its in-flight stream memory budget. */
  | 'budget';

/** A packet or stream from a peer could not be decoded; it is dropped and counted, never thrown further. */
export class GossipDecodeError extends OklogError {
  readonly reason: DropReason;
  constructor(reason: DropReason, message: string) {
    super(message, 'OKLOG_ERR_GOSSIP_DECODE', { reason });
    this.name = 'GossipDecodeError';
    this.reason = reason;
  }
}

/** More bytes are needed; `needed` is the smallest total length that could make decoding progress. */
export class TruncatedError extends GossipDecodeError {
  readonly needed: number;
  constructor(needed: number) {
    super('truncated', `truncated input: need at least ${needed} bytes`);
    this.name = 'TruncatedError';
    this.needed = needed;
  }
}

/** A gossip exchange with a peer failed (connection, timeout, remote error, protocol mismatch). */
export class GossipError extends OklogError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, 'OKLOG_ERR_GOSSIP', context, options);
    this.name = 'GossipError';
  }
}

/** No usable advertise address (§5.3 fixed: never a nil IP, always a clear message). */
export class AdvertiseAddressError extends InvalidArgumentError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, context);
    this.name = 'AdvertiseAddressError';
  }
}

/** The `-cluster.key` file is missing, unreadable or holds an invalid key. */
export class KeyFileError extends InvalidArgumentError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, context);
    this.name = 'KeyFileError';
  }
}
