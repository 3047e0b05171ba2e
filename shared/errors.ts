// Typed errors with stable codes, in the manner of undici's lib/core/errors.js: callers branch on
// `code` (never on message text), and `context` carries what a log line or HTTP reply needs.

export type ErrorContext = Record<string, unknown>;

export class OklogError extends Error {
  readonly code: string;
  readonly context: ErrorContext;
  constructor(
    message: string,
    code = 'OKLOG_ERR',
    context: ErrorContext = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'OklogError';
    this.code = code;
    this.context = context;
  }
}

/** A value supplied by a user or peer (flag, query parameter, id, address) is malformed. */
export class InvalidArgumentError extends OklogError {
  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, 'OKLOG_ERR_INVALID_ARGUMENT', context, options);
    this.name = 'InvalidArgumentError';
  }
}

/** A ULID string is not 26 Crockford base32 characters or overflows 128 bits. */
export class InvalidUlidError extends OklogError {
  constructor(value: string) {
    super(`invalid ULID ${JSON.stringify(value)}`, 'OKLOG_ERR_INVALID_ULID', { value });
    this.name = 'InvalidUlidError';
  }
}

/** A time argument is neither `now`, a duration, nor RFC 3339. */
export class InvalidTimeError extends OklogError {
  constructor(value: string, what = 'time') {
    super(
      `couldn't parse ${what} (${JSON.stringify(value)}) as either duration or time`,
      'OKLOG_ERR_INVALID_TIME',
      {
        value,
        what,
      },
    );
    this.name = 'InvalidTimeError';
  }
}

/** An address string is not in any accepted form. */
export class InvalidAddressError extends OklogError {
  constructor(value: string, reason = 'unsupported address format') {
    super(`${value}: ${reason}`, 'OKLOG_ERR_INVALID_ADDRESS', { value });
    this.name = 'InvalidAddressError';
  }
}

/** Something asked for does not exist (segment id, peer). */
export class NotFoundError extends OklogError {
  constructor(message: string, context: ErrorContext = {}) {
    super(message, 'OKLOG_ERR_NOT_FOUND', context);
    this.name = 'NotFoundError';
  }
}

/** A state-machine transition is not allowed from the current state (e.g. commit before read). */
export class StateError extends OklogError {
  constructor(message: string, code: string, context: ErrorContext = {}) {
    super(message, code, context);
    this.name = 'StateError';
  }
}

/** The data directory is locked by another live process. */
export class LockedError extends OklogError {
  constructor(path: string, options?: { cause?: unknown }) {
    super(
      `locking ${path}: data directory is in use by another oklog process (remove nothing; stop that process first)`,
      'OKLOG_ERR_LOCKED',
      { path },
      options,
    );
    this.name = 'LockedError';
  }
}

/** A remote node answered with an error status or could not be reached. */
export class RemoteError extends OklogError {
  readonly status?: number;
  constructor(
    message: string,
    context: ErrorContext & { status?: number } = {},
    options?: { cause?: unknown },
  ) {
    super(message, 'OKLOG_ERR_REMOTE', context, options);
    this.name = 'RemoteError';
    this.status = context.status;
  }
}

/** A record or body exceeds a configured maximum size. */
export class TooLargeError extends OklogError {
  constructor(message: string, context: ErrorContext = {}) {
    super(message, 'OKLOG_ERR_TOO_LARGE', context);
    this.name = 'TooLargeError';
  }
}

export function isOklogError(err: unknown): err is OklogError {
  return err instanceof OklogError;
}

/** Maps typed errors to HTTP statuses (the API server, and in-process calls that stand in for it). */
export function httpStatusOf(err: unknown): number {
  if (!isOklogError(err)) {
    const s = (err as { statusCode?: number }).statusCode;
    return typeof s === 'number' && s >= 400 ? s : 500;
  }
  switch (err.code) {
    case 'OKLOG_ERR_INVALID_ARGUMENT':
    case 'OKLOG_ERR_INVALID_ULID':
    case 'OKLOG_ERR_INVALID_TIME':
      return 400;
    case 'OKLOG_ERR_NOT_FOUND':
      return 404;
    case 'OKLOG_ERR_TOO_LARGE':
      return 413;
    default:
      return (err as { status?: number }).status ?? 500;
  }
}

/** One-line description of any thrown value, for CLI output and logs. */
export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof Error && !err.message.includes(cause.message))
      return `${err.message}: ${cause.message}`;
    return err.message;
  }
  return String(err);
}
