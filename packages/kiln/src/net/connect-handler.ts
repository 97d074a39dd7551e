import { createConnectRouter, type ConnectRouter, type ConnectRouterOptions } from "@connectrpc/connect";
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { ERROR_CODE_HEADER, ErrorCode } from "@kiln/protocol";
import type * as http from "node:http";
import type * as http2 from "node:http2";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

/** How Connect words a request body that is not the message it should be (and calls it INTERNAL). */
const PARSE_FAILURE = /^parse binary: /;

/**
 * Connect's Node adapter (`connectNodeAdapter`, the same routing and compression), except that a
 * request whose protobuf cannot be parsed is answered INVALID_ARGUMENT naming the message type, not
 * INTERNAL "parse binary: …": the client sent it wrong, the server did not fail. Covers the Connect
 * unary and gRPC protocols (Kiln's and Flame's clients, curl); JSON bodies Connect already answers so.
 *
 * @example
 * http2.createServer(connectHandler({ routes: (router) => router.service(flame.Frontend, impl) }));
 */
export function connectHandler(
  options: ConnectRouterOptions & { routes(router: ConnectRouter): void },
): (req: Request, res: Response) => void {
  const router = createConnectRouter({ acceptCompression: [compressionGzip, compressionBrotli], ...options });
  options.routes(router);
  const paths = new Map(router.handlers.map((h) => [h.requestPath, parseFailuresAreInvalid(h)]));
  return (req, res) => {
    const handler = paths.get(req.url?.split("?", 1)[0] ?? "");
    if (!handler) {
      res.writeHead(404);
      res.end();
      return;
    }
    handler(universalRequestFromNodeRequest(req, res, undefined, undefined))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch(() => res.destroy());
  };
}

function parseFailuresAreInvalid(handler: UniversalHandler): UniversalHandler {
  const explain = (raw: string) =>
    `the request is not a valid ${handler.method.input.typeName} message (${raw.replace(PARSE_FAILURE, "")})`;
  const wrapped = async (req: Parameters<UniversalHandler>[0]): Promise<UniversalServerResponse> => {
    const res = await handler(req);
    return res.trailer ? fixGrpcTrailer(res, explain) : fixConnectError(res, explain);
  };
  return Object.assign(wrapped, handler);
}

/** gRPC: the status is in the trailers, set once the body has run. */
function fixGrpcTrailer(res: UniversalServerResponse, explain: (raw: string) => string): UniversalServerResponse {
  const trailer = res.trailer!;
  const body = res.body;
  return {
    ...res,
    body: (async function* () {
      if (body) yield* body;
      const message = decodeURIComponent(trailer.get("grpc-message") ?? "");
      if (trailer.get("grpc-status") !== "13" || !PARSE_FAILURE.test(message)) return;
      trailer.set("grpc-status", "3");
      trailer.set("grpc-message", encodeURIComponent(explain(message)));
      trailer.set(ERROR_CODE_HEADER, ErrorCode.InvalidArgument);
    })(),
  };
}

/** Connect unary: an error is a JSON body with an HTTP status. */
async function fixConnectError(
  res: UniversalServerResponse,
  explain: (raw: string) => string,
): Promise<UniversalServerResponse> {
  if (res.status !== 500 || !res.body || res.header?.get("content-type") !== "application/json") return res;
  const chunks: Uint8Array[] = [];
  for await (const chunk of res.body) chunks.push(chunk);
  const bytes = Buffer.concat(chunks);
  const error = JSON.parse(bytes.toString("utf8")) as { code?: string; message?: string };
  const unchanged = {
    ...res,
    body: (async function* () {
      yield bytes;
    })(),
  };
  if (error.code !== "internal" || !PARSE_FAILURE.test(error.message ?? "")) return unchanged;
  const header = new Headers(res.header);
  header.delete("content-length");
  header.set(ERROR_CODE_HEADER, ErrorCode.InvalidArgument);
  const fixed = JSON.stringify({ code: "invalid_argument", message: explain(error.message!) });
  return {
    ...res,
    status: 400,
    header,
    body: (async function* () {
      yield Buffer.from(fixed);
    })(),
  };
}
