// Typed errors of the store node, each with a stable `code` (callers branch on it, never on text).
// The API maps InvalidArgumentError subclasses to 400 and uses `status` for the others.
import { InvalidArgumentError, OklogError } from '../../shared/errors.ts';

/** A `/store/replicate` body is not a sorted, newline-terminated list of `<ULID> <text>` lines. */
export class InvalidRecordsError extends InvalidArgumentError {
  readonly status = 400;
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, context);
    // Its own code (still an InvalidArgumentError for `instanceof`); `status` keeps it a 400.
    (this as { code: string }).code = 'OKLOG_ERR_INVALID_RECORDS';
    this.name = 'InvalidRecordsError';
  }
}

/** The store log has been closed (the node is shutting down): try another node. */
export class StoreClosedError extends OklogError {
  readonly status = 503;
  constructor() {
    super('store is shutting down', 'OKLOG_ERR_STORE_CLOSED');
    this.name = 'StoreClosedError';
  }
}

/** No store node is known, so a user query has nowhere to go. */
export class NoStoreNodesError extends OklogError {
  readonly status = 503;
  constructor() {
    super('no store nodes available', 'OKLOG_ERR_NO_STORE_NODES');
    this.name = 'NoStoreNodesError';
  }
}

/** A segment file (or a peer's query body) holds a line that is not a record. */
export class MalformedRecordError extends OklogError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message, 'OKLOG_ERR_MALFORMED_RECORD', context);
    this.name = 'MalformedRecordError';
  }
}
