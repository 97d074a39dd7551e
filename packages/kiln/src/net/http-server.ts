import * as http from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import type * as net from "node:net";
import { logRefusedConnections, serverTlsOptions, type TlsServerOptions } from "./tls.js";

/** TLS for a listener, and where to log the connections it refuses. */
export interface SecureListen {
  tls: TlsServerOptions;
  log(line: string): void;
}

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

export interface Listener {
  port: number;
  close(): Promise<void>;
}

/**
 * HTTP/2 (gRPC, and Connect/JSON for HTTP/2 clients): cleartext (h2c, as
 * `curl --http2-prior-knowledge` speaks it), or with `tls` over TLS with
 * ALPN h2 only. HTTP/1.1 needs its own port: Node's HTTP/2 session reads
 * from the native socket handle, so a connection whose first bytes were
 * sniffed cannot be handed to it without a slow JS stream wrapper (measured
 * at a third of the request rate).
 */
export async function listenHttp2(
  host: string,
  port: number,
  handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
  secure?: SecureListen,
): Promise<Listener> {
  let server: http2.Http2Server | http2.Http2SecureServer;
  if (secure) {
    const tlsServer = http2.createSecureServer(serverTlsOptions(secure.tls), handler);
    logRefusedConnections(tlsServer, secure.log);
    server = tlsServer;
  } else {
    server = http2.createServer({}, handler);
  }
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
    // Garbage instead of the HTTP/2 preface ends that session only.
    s.on("error", () => s.destroy());
  });
  return listen(server, host, port, () => {
    for (const s of sessions) s.destroy();
  });
}

/** HTTP/1.1 for Connect's JSON protocol, so plain `curl` and `fetch` work; HTTPS with `tls`. */
export async function listenHttp1(
  host: string,
  port: number,
  handler: Handler,
  secure?: SecureListen,
): Promise<Listener> {
  let server: http.Server;
  if (secure) {
    const tlsServer = https.createServer(serverTlsOptions(secure.tls), handler);
    logRefusedConnections(tlsServer, secure.log);
    server = tlsServer;
  } else {
    server = http.createServer(handler);
  }
  server.keepAliveTimeout = 5_000;
  return listen(server, host, port, () => server.closeAllConnections());
}

async function listen(server: net.Server, host: string, port: number, dropConnections: () => void): Promise<Listener> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        dropConnections();
      }),
  };
}
