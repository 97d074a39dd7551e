import * as fs from "node:fs";
import * as path from "node:path";
import { InvalidArgumentError } from "@kiln/protocol";
import type { TlsClientOptions } from "@kiln/protocol/transport";

/** One PEM file a client reads for TLS, and the setting that named it (for errors). */
export interface TlsFile {
  path: string;
  /** The option, env variable or config field it came from, e.g. `KILN_TLS_CA`. */
  field: string;
}

/**
 * The files a client uses for `https://` endpoints: the CA to verify the
 * server with, and a client certificate + key for servers that require
 * mutual TLS. Paths, not contents, so a node agent can hand the same CA file
 * to the service processes it starts.
 */
export interface TlsFiles {
  ca?: TlsFile;
  cert?: TlsFile;
  key?: TlsFile;
}

/** The TLS settings of the client API, as {@link ConnectOptions} and the CLI's flags spell them. */
export interface TlsFileOptions {
  /** PEM file of the CA that signed the server's certificate (default: env KILN_TLS_CA, else the system's CAs). */
  tlsCa?: string;
  /** PEM client certificate for a server that requires mutual TLS (env KILN_TLS_CLIENT_CERT). */
  tlsClientCert?: string;
  /** PEM key of `tlsClientCert` (env KILN_TLS_CLIENT_KEY). */
  tlsClientKey?: string;
}

/** A config context's TLS fields (`cluster.tls-ca`, …), relative paths already resolved against the file's folder. */
export type ContextTls = TlsFiles;

const SETTINGS = [
  ["ca", "tlsCa", "KILN_TLS_CA"],
  ["cert", "tlsClientCert", "KILN_TLS_CLIENT_CERT"],
  ["key", "tlsClientKey", "KILN_TLS_CLIENT_KEY"],
] as const;

/**
 * Resolves each TLS file on its own: options, then env, then the config
 * context. The context's client certificate is used only with the context's
 * endpoint (like its token); its CA is trust, not a secret, and applies to
 * every endpoint the context is used for.
 */
export function resolveTlsFiles(
  options: TlsFileOptions,
  env: Record<string, string | undefined>,
  context: ContextTls | undefined,
  contextEndpointUsed: boolean,
): TlsFiles {
  const files: TlsFiles = {};
  for (const [slot, option, variable] of SETTINGS) {
    const fromContext = slot === "ca" || contextEndpointUsed ? context?.[slot] : undefined;
    const file = options[option]
      ? { path: options[option], field: option }
      : env[variable]
        ? { path: env[variable], field: variable }
        : fromContext;
    if (file) files[slot] = file;
  }
  if (Boolean(files.cert) !== Boolean(files.key)) {
    const [given, missing] = files.cert ? [files.cert, "tlsClientKey"] : [files.key!, "tlsClientCert"];
    throw new InvalidArgumentError(given.field, `a client certificate needs both files: ${missing} is not set`);
  }
  return files;
}

/**
 * Reads the PEM files; one that cannot be read throws InvalidArgumentError
 * naming its setting and path.
 *
 * @example
 * createClusterTransport({ endpoint, tls: readTlsFiles({ ca: { path: "ca.pem", field: "tlsCa" } }) });
 */
export function readTlsFiles(files: TlsFiles): TlsClientOptions {
  const tls: TlsClientOptions = {};
  for (const slot of ["ca", "cert", "key"] as const) {
    const file = files[slot];
    if (!file) continue;
    try {
      tls[slot] = fs.readFileSync(file.path, "utf8");
    } catch (e) {
      throw new InvalidArgumentError(file.field, `cannot read ${file.path}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  }
  return tls;
}

/** A context's file path, relative to the config file's folder (so a config and its CA can move together). */
export function contextFilePath(configPath: string, file: string): string {
  return path.resolve(path.dirname(configPath), file);
}
