import type * as http2 from "node:http2";

/** What Kiln sends; any `application/grpc` or `application/grpc+proto` is accepted. */
export const GRPC_CONTENT_TYPE = "application/grpc+proto";

const BINARY_GRPC = /^application\/grpc(\+proto)?\s*(;.*)?$/i;

/** True for gRPC with protobuf messages, the only form the fast stream path reads and writes. */
export function isGrpcContentType(value: string | undefined): boolean {
  return value !== undefined && BINARY_GRPC.test(value);
}

/** Copies Node's HTTP/2 header object into `target`, leaving out pseudo-headers (`:status`, `:path`). */
export function webHeaders(node: http2.IncomingHttpHeaders, target = new Headers()): Headers {
  for (const [key, value] of Object.entries(node)) {
    if (key.startsWith(":") || value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) target.append(key, v);
    else target.append(key, String(value));
  }
  return target;
}
