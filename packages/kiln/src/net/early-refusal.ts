import { ERROR_CODE_HEADER, type KilnError } from "@kiln/protocol";
import { Code } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type * as http from "node:http";
import * as http2 from "node:http2";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

/** Bodies up to this size are read to their end after an early answer, keeping the connection; larger ones close it. */
const DRAIN_LIMIT = 64 * 1024;
/** How long a refused large upload is still read (and dropped, never kept) before its connection closes. */
const LINGER_MS = 2_000;

/** HTTP statuses of the refusals a request can get before its body is read; the rest are 400. */
const HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 413,
};

/**
 * Answers a request that is refused from its headers alone (no credential, a body over the route's
 * limit), in its own protocol: gRPC and gRPC-web get a trailers-only status, Connect and plain JSON
 * clients the HTTP status and a Connect error body. Nothing of the body is kept, and a large body still
 * arriving is cut off (see {@link endUnreadBody}).
 *
 * @example
 * if (refusal) return refuseEarly(req, res, refusal);
 */
export function refuseEarly(req: Request, res: Response, error: KilnError): void {
  const connect = error.toConnectError();
  const contentType = req.headers["content-type"] ?? "";
  if (/^application\/grpc/i.test(contentType)) {
    res.writeHead(200, {
      "content-type": contentType,
      "grpc-status": String(connect.code),
      "grpc-message": encodeURIComponent(connect.rawMessage),
      [ERROR_CODE_HEADER]: error.code,
    });
    res.end();
  } else {
    const body = JSON.stringify({ code: codeToString(connect.code), message: connect.rawMessage });
    res.writeHead(HTTP_STATUS[connect.code] ?? 400, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      [ERROR_CODE_HEADER]: error.code,
    });
    res.end(body);
  }
  endUnreadBody(req, res);
}

/**
 * After an answer sent before the request's body was read to its end: a small rest is read and
 * dropped (the connection stays usable); a large one is not waited for. HTTP/2 ends the stream
 * (RST_STREAM NO_ERROR, "stop sending") once the answer is out. HTTP/1.1 has no such signal: Node
 * reads and drops the rest, and the connection closes after LINGER_MS. Closing at once is no
 * better: the client's next write then fails (EPIPE, ECONNRESET) and it often sees that instead of
 * the answer (measured: 3 refused uploads in 8).
 */
export function endUnreadBody(req: Request, res: Response): void {
  if (req.complete || Number(req.headers["content-length"] ?? Infinity) <= DRAIN_LIMIT) return;
  if ("stream" in res) {
    res.stream.close(http2.constants.NGHTTP2_NO_ERROR);
    return;
  }
  // The response's: a request whose reading stopped half-way has already let go of its socket.
  const socket = res.socket;
  if (!socket || socket.destroyed) return;
  const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
  const done = () => clearTimeout(timer);
  req.once("end", done);
  socket.once("close", done);
}
