import { ErrorCode, InvalidArgumentError, KilnError, ERROR_CODE_HEADER } from "@kiln/protocol";
import type * as http from "node:http";
import { endUnreadBody } from "../net/early-refusal.js";
import type { RouteRequest, RouteResponse } from "./exchange.js";
import { diskFullError, ObjectTooLargeError } from "./storage/errors.js";

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

/** A request body over its route's limit, refused before or while it is read (HTTP 413). */
export class BodyTooLargeError extends KilnError {
  constructor(route: string, limit: number) {
    super(ErrorCode.ResourceExhausted, `a ${route} body is limited to ${limit} bytes`);
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
  if (err instanceof ObjectTooLargeError || err instanceof BodyTooLargeError) return 413;
  if (err instanceof MethodNotAllowedError) return 405;
  if (err instanceof RangeNotSatisfiableError) return 416;
  return STATUS[err.code] ?? 500;
}

/**
 * Answers with `{code, message, field?}` and the `kiln-error-code` header.
 * A full disk is RESOURCE_EXHAUSTED (507); other unexpected errors become
 * INTERNAL. Both are logged. A response already under
 * way can only be cut off.
 */
export function sendError(req: RouteRequest, res: RouteResponse, err: unknown, log: (line: string) => void): void {
  const full = diskFullError(err);
  if (full) log(`cache: ${req.method} ${req.url}: ${full.message}`);
  const known = err instanceof KilnError || full !== undefined;
  const error =
    full ??
    (err instanceof KilnError
      ? err
      : new KilnError(ErrorCode.Internal, `internal error: ${err instanceof Error ? err.message : String(err)}`));
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
  if (!req.complete) endUnreadBody(req as http.IncomingMessage, res as http.ServerResponse);
  res.writeHead(statusOf(error), headers);
  res.end(body);
}
