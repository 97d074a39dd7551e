/**
 * How Kiln's messages travel: gRPC over HTTP/2 to a cluster or over a Unix
 * socket to a service process, with a short path of its own for streams
 * (`stream-call.ts` client, `stream-server.ts` server), and the helpers both
 * ends of the Instance protocol use.
 */
export {
  createClusterTransport,
  createUnixSocketTransport,
  TOKEN_HEADER,
  INSTANCE_READ_MAX_BYTES,
  type TransportOptions,
  type TlsClientOptions,
} from "./cluster-transport.js";
export { StreamRoutes, type StreamServerOptions } from "./stream-server.js";
export { translateErrors } from "./translate-errors.js";
export { speaksTls } from "./speaks-tls.js";
export { BatchQueue } from "./batch-queue.js";
export { LazyAbort } from "./lazy-abort.js";
export { SOCKET_ENV_VARS, resolveSocketPath, acceptsConnections, removeStaleSocket } from "./instance-socket.js";
