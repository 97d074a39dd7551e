import type * as http2 from "node:http2";
import * as net from "node:net";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { streamCaller } from "./stream-call.js";

/** Header carrying the cluster token on every request. */
export const TOKEN_HEADER = "authorization";

/**
 * What a client needs for `https://` endpoints, as PEM text: the CA that
 * signed the server's certificate (default: the system's CAs), and the
 * client certificate a server that requires mutual TLS checks.
 */
export interface TlsClientOptions {
  ca?: string;
  cert?: string;
  key?: string;
}

export interface TransportOptions {
  /** `http://host:port` (h2c) or `https://host:port` (TLS, ALPN h2). */
  endpoint: string;
  token?: string;
  /** For `https://` endpoints; ignored for `http://`. */
  tls?: TlsClientOptions;
  /** Largest message this side accepts, bytes. */
  readMaxBytes?: number;
  /**
   * Send an HTTP/2 PING when the connection has been quiet this long, to
   * notice a peer that vanished without closing it (long-lived streams).
   */
  pingIntervalMs?: number;
  /** Close the connection (failing its streams) when a PING gets no answer this long. */
  pingTimeoutMs?: number;
}

// Not advertising gzip keeps servers from compressing what they send: on a cluster network the
// control plane's CPU, not bandwidth, limits throughput, and profiles showed zlib on every hop.
const NO_COMPRESSION: [] = [];

function bearer(token: string): string {
  return `Bearer ${token}`;
}

function tokenInterceptor(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set(TOKEN_HEADER, bearer(token));
    return next(req);
  };
}

/**
 * An Http2SessionManager whose sessions never crash the process with a late
 * "error" event. When the peer is not an HTTP/2 server (a client pointed at
 * the object cache's port), nghttp2 destroys the session itself; the
 * manager's abort() then sees it destroyed, removes its own listeners, and
 * the error that Node emits when the socket closes finds no listener. Every
 * failure still reaches the calls through their streams.
 */
class GuardedSessionManager extends Http2SessionManager {
  private readonly guarded = new WeakSet<http2.Http2Session>();

  override async request(...args: Parameters<Http2SessionManager["request"]>): Promise<http2.ClientHttp2Stream> {
    const stream = await super.request(...args);
    const session = stream.session;
    if (session && !this.guarded.has(session)) {
      this.guarded.add(session);
      session.on("error", () => undefined);
    }
    return stream;
  }
}

/**
 * A gRPC (HTTP/2) transport to a Kiln or Flame endpoint. One HTTP/2
 * connection carries every call and stream: unary calls go through
 * Connect's gRPC transport, streams through `streamCaller`. Call `close()`
 * to let the process exit.
 */
export function createClusterTransport(options: TransportOptions): { transport: Transport; close(): void } {
  const url = new URL(options.endpoint);
  const baseUrl = `${url.protocol}//${url.host}`;
  const sessionManager = new GuardedSessionManager(
    baseUrl,
    {
      idleConnectionTimeoutMs: 60_000,
      ...(options.pingIntervalMs !== undefined ? { pingIntervalMs: options.pingIntervalMs } : {}),
      ...(options.pingTimeoutMs !== undefined ? { pingTimeoutMs: options.pingTimeoutMs } : {}),
    },
    url.protocol === "https:" ? secureSessionOptions(options.tls) : {},
  );
  return overSessions(sessionManager, baseUrl, options.readMaxBytes ?? 256 * 1024 * 1024, options.token);
}

/** TLS settings for an HTTP/2 session: only what was given, so the system's CAs stay the default. */
function secureSessionOptions(tls: TlsClientOptions | undefined): http2.SecureClientSessionOptions {
  return {
    ...(tls?.ca !== undefined ? { ca: tls.ca } : {}),
    ...(tls?.cert !== undefined ? { cert: tls.cert } : {}),
    ...(tls?.key !== undefined ? { key: tls.key } : {}),
  };
}

/** Largest message either end of the agent ↔ service socket accepts: it only bounds a broken peer. */
export const INSTANCE_READ_MAX_BYTES = 1024 * 1024 * 1024;

/** A gRPC transport over a Unix socket (how an agent reaches a service process). */
export function createUnixSocketTransport(socketPath: string): { transport: Transport; close(): void } {
  const baseUrl = "http://localhost";
  const sessionManager = new GuardedSessionManager(baseUrl, {}, { createConnection: () => net.connect(socketPath) });
  return overSessions(sessionManager, baseUrl, INSTANCE_READ_MAX_BYTES);
}

/** Unary calls through Connect's gRPC transport and streams through `streamCaller`, on one set of connections. */
function overSessions(
  sessionManager: Http2SessionManager,
  baseUrl: string,
  readMaxBytes: number,
  token?: string,
): { transport: Transport; close(): void } {
  const grpc = createGrpcTransport({
    baseUrl,
    sessionManager,
    readMaxBytes,
    writeMaxBytes: readMaxBytes,
    acceptCompression: NO_COMPRESSION,
    interceptors: token ? [tokenInterceptor(token)] : [],
  });
  const stream = streamCaller(sessionManager, {
    readMaxBytes,
    ...(token ? { header: { [TOKEN_HEADER]: bearer(token) } } : {}),
  });
  return { transport: { unary: grpc.unary.bind(grpc), stream }, close: () => sessionManager.abort() };
}
