import { InvalidArgumentError } from "@kiln/protocol";
import * as fs from "node:fs";
import * as tls from "node:tls";

/**
 * What a listener needs to serve TLS, as PEM text: its certificate (chain)
 * and key, and, for mutual TLS, the CA whose client certificates it
 * accepts. With `clientCa` a connection without such a certificate is
 * refused during the handshake, before any request is read, unless
 * `clientCertificates` is "nodes": then the certificate is asked for and
 * verified in the handshake, and required only of the agent's credentials
 * (see {@link isCertified}), so clients and service processes can use tokens.
 */
export interface TlsServerOptions {
  cert: string;
  key: string;
  clientCa?: string;
  /** Who must present a client certificate: every connection (default), or agents only. */
  clientCertificates?: "all" | "nodes";
}

/**
 * Whether the connection a request came on presented a client certificate the
 * server verified against its client CA (false over cleartext).
 */
export function isCertified(req: { socket: unknown }): boolean {
  return (req.socket as tls.TLSSocket | null)?.authorized === true;
}

/** The PEM files of a {@link TlsServerOptions}, as the CLI's flags name them. */
export interface TlsServerFiles {
  certFile: string;
  keyFile: string;
  clientCaFile?: string;
}

/**
 * Reads the server's PEM files; one that cannot be read, or is not PEM,
 * throws InvalidArgumentError naming the flag.
 *
 * @example
 * const tls = readServerTlsFiles({ certFile: "server.pem", keyFile: "server-key.pem" });
 */
export function readServerTlsFiles(files: TlsServerFiles): TlsServerOptions {
  return {
    cert: readPem("--tls-cert", files.certFile),
    key: readPem("--tls-key", files.keyFile),
    ...(files.clientCaFile !== undefined ? { clientCa: readPem("--tls-client-ca", files.clientCaFile) } : {}),
  };
}

function readPem(flag: string, file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new InvalidArgumentError(flag, `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  if (!text.includes("-----BEGIN ")) throw new InvalidArgumentError(flag, `${file} is not a PEM file`);
  return text;
}

/**
 * Logs each connection a TLS server refused in the handshake (no client
 * certificate, one from another CA, cleartext at a TLS port), so an operator
 * sees why an agent cannot join; the client sees only a closed connection.
 */
export function logRefusedConnections(server: tls.Server, log: (line: string) => void): void {
  server.on("tlsClientError", (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
    log(`refused a TLS connection from ${socket.remoteAddress ?? "?"}: ${err.code ?? err.message}`);
  });
}

/**
 * The options of `https.createServer` / `http2.createSecureServer` for
 * `options`, checked first: a key that does not match its certificate, or
 * text that is not a certificate, is refused naming the setting.
 */
export function serverTlsOptions(options: TlsServerOptions): tls.TlsOptions {
  const secure: tls.TlsOptions = {
    cert: options.cert,
    key: options.key,
    ...(options.clientCa !== undefined
      ? { ca: options.clientCa, requestCert: true, rejectUnauthorized: options.clientCertificates !== "nodes" }
      : {}),
  };
  try {
    tls.createSecureContext(secure);
  } catch (e) {
    throw new InvalidArgumentError("tls", `the certificate, key or client CA is unusable: ${(e as Error).message}`);
  }
  return secure;
}
