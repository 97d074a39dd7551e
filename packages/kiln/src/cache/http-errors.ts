import { ErrorCode, InvalidArgumentError, KilnError, ERROR_CODE_HEADER } from "@kiln/protocol";
import type * as http from "node:http";
import type { RouteRequest, RouteResponse } from "./exchange.js";
import { ObjectTooLargeError } from "./storage/errors.js";

/** Bodies up to this size are drained after an early error, keeping the connection; larger ones close it. */
const DRAIN_LIMIT = 64 * 1024;
/** How long a refused large upload is still read (and dropped) before its connection closes. */
const LINGER_MS = 2_000;

const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.InvalidArgument]: 400,
  [ErrorCode.Unauthenticated]: 401,
  [ErrorCode.PermissionDenied]: 403,
  [ErrorCode.NotFound]: 404,
  [ErrorCode.FailedPrecondition]: 409,
  [ErrorCode.AlreadyExists]: 409,
  [ErrorCode.ResourceExhausted]: 507,
  [ErrorCode.Unavailable]: 503,
  [ErrorCode.DeadlineExceeded]: 504,
};

/** A route exists but not for this method (HTTP 405 with `allow`). */
export class MethodNotAllowedError extends KilnError {
  constructor(
    method: string,
    readonly allow: string[],
  ) {
    super(ErrorCode.InvalidArgument, `method ${method} is not allowed here (allowed: ${allow.join(", ")})`);
  }
}

/** A range outside the object (HTTP 416); carries the headers (content-range) the response must include. */
export class RangeNotSatisfiableError extends InvalidArgumentError {
  constructor(
    range: string,
    size: number,
    readonly headers: http.OutgoingHttpHeaders,
  ) {
    super("range", `"${range}" is outside the object's ${size} bytes`);
  }
}

/** The HTTP status for an error: its KilnError code decides, anything else is 500. */
export function statusOf(err: KilnError): number {
  if (err instanceof ObjectTooLargeError) return 413;
  if (err instanceof MethodNotAllowedError) return 405;
  if (err instanceof RangeNotSatisfiableError) return 416;
  return STATUS[err.code] ?? 500;
}

/**
 * Answers with `{code, message, field?}` and the `kiln-error-code` header.
 * Unexpected errors become INTERNAL and are logged. A response already under
 * way can only be cut off.
 */
export function sendError(req: RouteRequest, res: RouteResponse, err: unknown, log: (line: string) => void): void {
  const known = err instanceof KilnError;
  const error = known
    ? err
    : new KilnError(ErrorCode.Internal, `internal error: ${err instanceof Error ? err.message : String(err)}`);
  if (!known) log(`cache: ${req.method} ${req.url} failed: ${err instanceof Error ? (err.stack ?? err.message) : err}`);
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const field = (error as { field?: unknown }).field;
  const body = JSON.stringify({
    code: error.code,
    message: error.message,
    ...(typeof field === "string" && { field }),
  });
  const headers: http.OutgoingHttpHeaders = {
    ...(error instanceof RangeNotSatisfiableError && error.headers),
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    [ERROR_CODE_HEADER]: error.code,
  };
  if (error instanceof MethodNotAllowedError) headers.allow = error.allow.join(", ");
  // Only a request still streaming in can be incomplete (a batch's sub-requests are whole).
  if (!req.complete && !(Number(req.headers["content-length"] ?? Infinity) <= DRAIN_LIMIT))
    lingerThenClose(req as http.IncomingMessage, res as http.ServerResponse);
  res.writeHead(statusOf(error), headers);
  res.end(body);
}

/**
 * Node reads and drops what is left of a body after the response, which for
 * a large upload could take as long as storing it; this closes the
 * connection after LINGER_MS instead. Closing at once is no better: the
 * client's next write then fails (EPIPE, ECONNRESET), and it often sees
 * that instead of this answer (measured: 3 refused uploads in 8).
 */
function lingerThenClose(req: http.IncomingMessage, res: http.ServerResponse): void {
  // The response's: a request whose reading stopped half-way has already let go of its socket.
  const socket = res.socket;
  if (!socket || socket.destroyed) return;
  const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
  const done = () => clearTimeout(timer);
  req.once("end", done);
  socket.once("close", done);
}
