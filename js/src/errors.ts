/** The errors a fastrpc peer raises, mirroring the Python package's. */

/** Base class of fastrpc's errors. */
export class FastRPCError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A remote handler raised: `type` is its exception's type name, `remoteMessage` its message. */
export class RemoteError extends FastRPCError {
  readonly type: string;
  readonly remoteMessage: string;
  readonly code: number | null;
  readonly traceback: string | null;
  constructor(type: string, message: string, code: number | null = null, traceback: string | null = null) {
    super(message ? `${type}: ${message}` : type);
    this.type = type;
    this.remoteMessage = message;
    this.code = code;
    this.traceback = traceback;
  }
}

/** A stream's sender failed it with STREAM_ERROR (its source raised). */
export class RemoteStreamError extends RemoteError {}

/** A stream's sender gave up on it (STREAM_ABORT). */
export class StreamAborted extends FastRPCError {}

/** The connection is closed (or was lost and could not be resumed): nothing more goes through. */
export class ConnectionClosed extends FastRPCError {
  readonly code: number;
  readonly reason: string;
  constructor(message: string, code = 1006, reason = "") {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

/** The server did not resume the session (it expired or the server restarted): what was in flight is lost. */
export class ResumeFailed extends ConnectionClosed {}

/** A value too large for the peer's limits (use a stream for large values). */
export class PayloadTooLarge extends FastRPCError {}
