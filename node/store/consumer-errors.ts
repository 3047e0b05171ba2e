// Typed errors of the segment consumer and its HTTP client, each with a stable `code` (log
// readers and tests branch on it, never on message text).
import { OklogError } from '../../shared/errors.ts';

/**
 * An ingest segment cannot be merged: a line is too short, lacks a canonical ULID and a space,
 * is out of order, or the segment does not end with a newline. Context: `line` (1-based),
 * `offset` (byte offset of that line).
 */
export class SegmentRejectedError extends OklogError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, 'OKLOG_ERR_SEGMENT_REJECTED', context);
    this.name = 'SegmentRejectedError';
  }
}

/** Fewer live store nodes than the replication factor: nothing is taken or committed. */
export class InsufficientStoresError extends OklogError {
  constructor(stores: number, replicationFactor: number) {
    super(
      `${stores} live store node(s), replication factor ${replicationFactor}: segments stay at the ingesters`,
      'OKLOG_ERR_INSUFFICIENT_STORES',
      { stores, replicationFactor },
    );
    this.name = 'InsufficientStoresError';
  }
}

/** A request to a peer took longer than its bound. Context: `url`, `phase`, `ms`. */
export class RequestTimeoutError extends OklogError {
  constructor(url: string, phase: string, ms: number) {
    super(`${url}: no ${phase} within ${ms} ms`, 'OKLOG_ERR_TIMEOUT', { url, phase, ms });
    this.name = 'RequestTimeoutError';
  }
}

/** A response body was longer than the caller accepts, or shorter than its Content-Length. */
export class BodyLengthError extends OklogError {
  constructor(url: string, message: string) {
    super(`${url}: ${message}`, 'OKLOG_ERR_BODY_LENGTH', { url });
    this.name = 'BodyLengthError';
  }
}

/**
 * An ingest segment is larger than the consumer reads into memory; found from its size (HTTP
 * Content-Length, or the file's size in-process) before any of its bytes are read. Context:
 * `url`, `size`, `max`.
 */
export class SegmentTooLargeError extends OklogError {
  constructor(url: string, size: number, max: number) {
    super(
      `${url}: segment of ${size} bytes exceeds the ${max} bytes the consumer reads into memory`,
      'OKLOG_ERR_SEGMENT_TOO_LARGE',
      { url, size, max },
    );
    this.name = 'SegmentTooLargeError';
  }
}
