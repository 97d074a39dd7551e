import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Stable error codes shared by the APIs, the CLI and the SDK. A code never
 * changes meaning; messages may be reworded.
 */
export const ErrorCode = {
  NotFound: "NOT_FOUND",
  AlreadyExists: "ALREADY_EXISTS",
  InvalidArgument: "INVALID_ARGUMENT",
  FailedPrecondition: "FAILED_PRECONDITION",
  Unauthenticated: "UNAUTHENTICATED",
  PermissionDenied: "PERMISSION_DENIED",
  ResourceExhausted: "RESOURCE_EXHAUSTED",
  Unavailable: "UNAVAILABLE",
  DeadlineExceeded: "DEADLINE_EXCEEDED",
  Cancelled: "CANCELLED",
  Internal: "INTERNAL",
  TaskFailed: "TASK_FAILED",
  TaskCancelled: "TASK_CANCELLED",
  /** A task was created, but the client lost the cluster before it learnt how the task ended. */
  OutcomeUnknown: "OUTCOME_UNKNOWN",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const toConnectCode: Record<ErrorCode, Code> = {
  NOT_FOUND: Code.NotFound,
  ALREADY_EXISTS: Code.AlreadyExists,
  // Flame maps invalid state to INVALID_ARGUMENT; Flame clients rely on it.
  INVALID_ARGUMENT: Code.InvalidArgument,
  FAILED_PRECONDITION: Code.InvalidArgument,
  UNAUTHENTICATED: Code.Unauthenticated,
  PERMISSION_DENIED: Code.PermissionDenied,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
  UNAVAILABLE: Code.Unavailable,
  DEADLINE_EXCEEDED: Code.DeadlineExceeded,
  CANCELLED: Code.Canceled,
  INTERNAL: Code.Internal,
  TASK_FAILED: Code.Aborted,
  TASK_CANCELLED: Code.Canceled,
  OUTCOME_UNKNOWN: Code.Unknown,
};

const fromConnectCode: Partial<Record<Code, ErrorCode>> = {
  [Code.NotFound]: ErrorCode.NotFound,
  [Code.AlreadyExists]: ErrorCode.AlreadyExists,
  [Code.InvalidArgument]: ErrorCode.InvalidArgument,
  [Code.FailedPrecondition]: ErrorCode.FailedPrecondition,
  [Code.Unauthenticated]: ErrorCode.Unauthenticated,
  [Code.PermissionDenied]: ErrorCode.PermissionDenied,
  [Code.ResourceExhausted]: ErrorCode.ResourceExhausted,
  [Code.Unavailable]: ErrorCode.Unavailable,
  [Code.DeadlineExceeded]: ErrorCode.DeadlineExceeded,
  [Code.Canceled]: ErrorCode.Cancelled,
};

/** Header carrying the stable Kiln code, so a client can tell FAILED_PRECONDITION from INVALID_ARGUMENT. */
export const ERROR_CODE_HEADER = "kiln-error-code";

/**
 * Base class of every error Kiln raises on purpose.
 *
 * @example
 * try { await client.getApplication("nope"); }
 * catch (e) { if (e instanceof KilnError && e.code === ErrorCode.NotFound) console.log("missing"); }
 */
export class KilnError extends Error {
  readonly code: ErrorCode;
  /**
   * The server the error came from (it answered so, or could not be reached), when a client knows:
   * a cluster's or an object cache's endpoint. Tells a cluster's UNAVAILABLE from its cache's.
   */
  endpoint?: string;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }

  /** The gRPC/Connect status for this error, with the Kiln code in metadata. */
  toConnectError(): ConnectError {
    return new ConnectError(this.message, toConnectCode[this.code], { [ERROR_CODE_HEADER]: this.code });
  }
}

/**
 * Whether `err` says something does not exist (code NOT_FOUND), whichever
 * class carries it: a NOT_FOUND from a server arrives as a plain KilnError.
 *
 * @example
 * try { await client.getApplication("demo"); } catch (e) { if (!isNotFound(e)) throw e; }
 */
export function isNotFound(err: unknown): err is KilnError {
  return err instanceof KilnError && err.code === ErrorCode.NotFound;
}

/**
 * For `.catch()`: undefined when the thing was not there; any other error is thrown on.
 *
 * @example
 * const stat = await cache.statObject("app/s/k").catch(ignoreNotFound); // ObjectStat | undefined
 */
export function ignoreNotFound(err: unknown): undefined {
  if (isNotFound(err)) return undefined;
  throw err;
}

export class NotFoundError extends KilnError {
  constructor(kind: string, id: string) {
    super(ErrorCode.NotFound, `${kind} "${id}" not found`);
  }
}

export class AlreadyExistsError extends KilnError {
  constructor(kind: string, id: string) {
    super(ErrorCode.AlreadyExists, `${kind} "${id}" already exists`);
  }
}

/** A request field broke a rule. The message names the field and the rule. */
export class InvalidArgumentError extends KilnError {
  readonly field: string;
  constructor(field: string, rule: string) {
    super(ErrorCode.InvalidArgument, `${field}: ${rule}`);
    this.field = field;
  }
}

/** The request is well formed but the object's state does not allow it (e.g. a task on a closed session). */
export class FailedPreconditionError extends KilnError {
  constructor(message: string) {
    super(ErrorCode.FailedPrecondition, message);
  }
}

export class UnauthenticatedError extends KilnError {
  constructor(message = "missing or invalid token", options?: { cause?: unknown }) {
    super(ErrorCode.Unauthenticated, message, options);
  }
}

/**
 * A valid credential asked for something outside its scope (a task credential
 * registering an application, a node token listing sessions): `what` names
 * the refused operation and `why` the scope that does not cover it.
 *
 * @example
 * new PermissionDeniedError('register application "x"', "a task credential may not manage applications")
 */
export class PermissionDeniedError extends KilnError {
  constructor(what: string, why: string) {
    super(ErrorCode.PermissionDenied, `permission denied: ${what}: ${why}`);
  }
}

/**
 * What a client sees when a server refused its token: which server, and where a token comes from.
 * `server` is "the cluster" or "the object cache"; `cause` is the server's own refusal.
 *
 * @example
 * tokenRefusedError("the cluster", "http://10.0.0.5:7420").message
 * // "the cluster at http://10.0.0.5:7420 refused the token (missing or invalid): set KILN_TOKEN, …"
 */
export function tokenRefusedError(server: string, endpoint: string, cause?: unknown): UnauthenticatedError {
  const error = new UnauthenticatedError(
    `${server} at ${endpoint} refused the token (${refusalReason(cause)}): set KILN_TOKEN or pass a token ` +
      `(connect({ token }), ObjectCache({ token })), or give the config context a token`,
    { cause },
  );
  error.endpoint = endpoint;
  return error;
}

/**
 * The server's own reason for a refusal when it says more than that the token is missing or wrong
 * (a task credential whose session closed, a certificate the node token needs), else "missing or invalid".
 */
function refusalReason(cause: unknown): string {
  const message = cause instanceof ConnectError ? cause.rawMessage : cause instanceof Error ? cause.message : "";
  return message && !/^missing or invalid token/.test(message) ? message : "missing or invalid";
}

/** A server that requires mutual TLS refused this client's certificate, or its lack of one: no token helps. */
export class ClientCertificateRefusedError extends UnauthenticatedError {}

/** Node's codes for a server certificate the client could not verify. */
const UNTRUSTED_CERTIFICATE = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** OpenSSL's codes for a server's alert that it refused this client's certificate (or its absence). */
const CLIENT_CERTIFICATE_REFUSED =
  /^ERR_SSL_(TLSV13_ALERT_CERTIFICATE_REQUIRED|SSLV3_ALERT_BAD_CERTIFICATE|TLSV1_ALERT_UNKNOWN_CA)$/;

/**
 * `err` as the TLS failure it is, naming `server` at `endpoint` and what to
 * set: a server certificate this client does not trust (FAILED_PRECONDITION:
 * give the CA) or a client certificate the server refused (UNAUTHENTICATED);
 * undefined for any other error.
 *
 * @example
 * tlsFailureError("the cluster", "https://10.0.0.5:7420", err)?.message
 * // "the cluster at https://10.0.0.5:7420 presented a certificate this client does not trust (…): give its CA …"
 */
export function tlsFailureError(server: string, endpoint: string, err: unknown): KilnError | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code !== "string") continue;
    let error: KilnError | undefined;
    if (UNTRUSTED_CERTIFICATE.has(code))
      error = new KilnError(
        ErrorCode.FailedPrecondition,
        `${server} at ${endpoint} presented a certificate this client does not trust (${e.message}): ` +
          `give the CA that signed it (--tls-ca, KILN_TLS_CA, the tlsCa option, or the config context's cluster.tls-ca)`,
        { cause: err },
      );
    else if (CLIENT_CERTIFICATE_REFUSED.test(code))
      error = new ClientCertificateRefusedError(
        `${server} at ${endpoint} requires a client certificate it trusts (${code}): ` +
          `give one (--tls-client-cert and --tls-client-key, or KILN_TLS_CLIENT_CERT and KILN_TLS_CLIENT_KEY)`,
        { cause: err },
      );
    if (error) {
      error.endpoint = endpoint;
      return error;
    }
  }
  return undefined;
}

export class TimeoutError extends KilnError {
  constructor(what: string, ms: number) {
    super(ErrorCode.DeadlineExceeded, `${what} timed out after ${ms} ms`);
  }
}

/** A task ended Failed (or Cancelled); carries the session and task ids, and any output the service sent with the failure. */
export class TaskFailedError extends KilnError {
  readonly sessionId: string;
  readonly taskId: string;
  readonly output?: Uint8Array;
  constructor(sessionId: string, taskId: string, message: string, cancelled = false, output?: Uint8Array) {
    super(
      cancelled ? ErrorCode.TaskCancelled : ErrorCode.TaskFailed,
      `task ${sessionId}/${taskId} ${cancelled ? "was cancelled" : "failed"}: ${message}`,
    );
    this.sessionId = sessionId;
    this.taskId = taskId;
    if (output !== undefined) this.output = output;
  }
}

/**
 * A task exists in the cluster, but the client could not learn how it ended:
 * the cluster stayed out of reach longer than the client's patience. The task
 * may still run (or have run), so running the work again may run it twice;
 * look the task up by its ids instead. A task that was never created fails
 * with UNAVAILABLE, never with this.
 */
export class OutcomeUnknownError extends KilnError {
  readonly sessionId: string;
  readonly taskId: string;
  constructor(sessionId: string, taskId: string, cause: KilnError) {
    super(
      ErrorCode.OutcomeUnknown,
      `task ${sessionId}/${taskId} was created, but its outcome is unknown: ${cause.message} ` +
        `(it may still run; look it up before running it again)`,
      { cause },
    );
    this.sessionId = sessionId;
    this.taskId = taskId;
  }
}

/** Turns anything thrown by a Connect call into a KilnError, keeping the stable code when the server sent one. */
export function toKilnError(err: unknown): KilnError {
  if (err instanceof KilnError) return err;
  const ce = ConnectError.from(err);
  const sent = ce.metadata.get(ERROR_CODE_HEADER) as ErrorCode | null;
  const code = sent && sent in toConnectCode ? sent : (fromConnectCode[ce.code] ?? ErrorCode.Internal);
  return new KilnError(code, ce.rawMessage, { cause: err });
}

/** Turns anything thrown inside a handler into the ConnectError a client should see. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof KilnError) return err.toConnectError();
  if (err instanceof ConnectError) return err;
  return new ConnectError(err instanceof Error ? err.message : String(err), Code.Internal);
}
