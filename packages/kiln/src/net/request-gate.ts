import { KilnError, ErrorCode } from "@kiln/protocol";
import type * as http from "node:http";
import type * as http2 from "node:http2";
import type { Admit } from "./auth.js";
import { endUnreadBody, refuseEarly } from "./early-refusal.js";
import { isCertified } from "./tls.js";

/** The largest body a route accepts, and what sets it (a flag, or why it is fixed), for the refusal. */
export interface BodyLimit {
  bytes: number;
  setBy: string;
}

export interface RequestGateOptions {
  /** The credential check (see {@link Admit}). */
  admit: Admit;
  /** The body limit of the route at `path` (no query); undefined for a route that has none of its own. */
  limitOf(path: string): BodyLimit | undefined;
}

/**
 * Puts the checks a request can fail from its headers alone in front of `next`: its credential
 * (UNAUTHENTICATED, 401; PERMISSION_DENIED, 403) and its declared length against its route's limit (RESOURCE_EXHAUSTED, 413,
 * naming the limit). Either refusal goes out before a byte of the body is read. A body without a
 * declared length is counted by the route as it reads (the same limit); if the route answers before
 * reading all of it, what is left is not waited for.
 *
 * @example
 * http.createServer(requestGate({ admit, limitOf: () => ({ bytes: 1 << 20, setBy: "fixed" }) }, handler));
 */
export function requestGate<
  Req extends http.IncomingMessage | http2.Http2ServerRequest,
  Res extends http.ServerResponse | http2.Http2ServerResponse,
>(options: RequestGateOptions, next: (req: Req, res: Res) => void): (req: Req, res: Res) => void {
  return (req, res) => {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const refusal = options.admit(req.headers, path, { certified: isCertified(req) });
    if (refusal) return refuseEarly(req, res, refusal);
    const limit = options.limitOf(path);
    const declared = req.headers["content-length"];
    if (limit !== undefined && declared !== undefined && Number(declared) > limit.bytes)
      return refuseEarly(req, res, bodyTooLarge(path, Number(declared), limit));
    res.once("finish", () => endUnreadBody(req, res));
    next(req, res);
  };
}

/**
 * The refusal of a body over its route's limit, e.g. "request body of 200000000 bytes is over the
 * 16842752-byte limit of /flame.v1.Frontend/CreateTask (--max-task-bytes + 64 KiB)".
 */
function bodyTooLarge(path: string, bytes: number, limit: BodyLimit): KilnError {
  return new KilnError(
    ErrorCode.ResourceExhausted,
    `request body of ${bytes} bytes is over the ${limit.bytes}-byte limit of ${path} (${limit.setBy})`,
  );
}
