// Typed errors of the ingest tier. Each has a stable `code`; those that reach HTTP carry the
// `status` that node/api's error handler answers with (it falls back to `status` for codes it does
// not map itself), and their messages are OK Log's where OK Log had one (reference §3.5).
import { type ErrorContext, OklogError } from '../../shared/errors.ts';

export class IngestError extends OklogError {
  readonly status: number;
  constructor(
    message: string,
    code: string,
    status: number,
    context: ErrorContext = {},
    options?: { cause?: unknown },
  ) {
    super(message, code, context, options);
    this.name = 'IngestError';
    this.status = status;
  }
}

/** `POST /ingest/commit` on a claim nobody has read: the store has not got the records yet. */
export class SegmentNotReadError extends IngestError {
  constructor(id: string) {
    super("segment hasn't been read yet; can't commit", 'OKLOG_ERR_SEGMENT_NOT_READ', 428, { id });
  }
}

/** A claim can be read once; a second reader would consume a segment the first one also commits. */
export class SegmentAlreadyReadingError extends IngestError {
  constructor(id: string) {
    super('another client is already reading this segment', 'OKLOG_ERR_SEGMENT_READING', 500, { id });
  }
}

/** The claimed file vanished or could not be renamed between choosing it and renaming it. */
export class SegmentRaceError extends IngestError {
  constructor(cause: unknown) {
    super('race when fetching oldest; please try again', 'OKLOG_ERR_SEGMENT_RACE', 500, {}, { cause });
  }
}

/** The ingest log is closing or closed (SIGTERM); clients retry against another node or later. */
export class ShuttingDownError extends IngestError {
  constructor() {
    super('ingest node is shutting down', 'OKLOG_ERR_SHUTTING_DOWN', 503);
  }
}

/** A topic (flag, query parameter or dynamic-mode line prefix) breaks `[A-Za-z0-9][A-Za-z0-9_-]*`. */
export class InvalidTopicError extends IngestError {
  constructor(topic: string) {
    super(`topic name ${JSON.stringify(topic)} invalid`, 'OKLOG_ERR_INVALID_TOPIC', 400, { topic });
  }
}

/** Acked writes are buffered until the whole body is valid; this many bytes are in flight already. */
export class BusyError extends IngestError {
  constructor(inflight: number) {
    super('too many acknowledged writes in flight; retry later', 'OKLOG_ERR_BUSY', 503, { inflight });
  }
}

/** A listener could not bind its address (port taken, bad host). Fatal at start-up. */
export class ListenError extends IngestError {
  constructor(flag: string, address: string, cause: unknown) {
    const why =
      (cause as NodeJS.ErrnoException)?.code === 'EADDRINUSE'
        ? 'address already in use'
        : String((cause as Error)?.message ?? cause);
    super(`-${flag}: listen tcp ${address}: ${why}`, 'OKLOG_ERR_LISTEN', 500, { flag, address }, { cause });
  }
}

/** Creating, writing, syncing or rotating a segment file failed; the connection using it is closed. */
export class WriterError extends IngestError {
  constructor(op: string, path: string, cause: unknown) {
    super(
      `${op} ${path || 'segment'}: ${(cause as Error)?.message ?? cause}`,
      'OKLOG_ERR_WRITER',
      500,
      { op, path },
      {
        cause,
      },
    );
  }
}
