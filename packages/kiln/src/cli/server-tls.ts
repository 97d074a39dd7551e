import * as path from "node:path";
import { Option, type Command } from "commander";
import { ensureLocalTls, serverNames } from "../net/local-ca.js";
import { readServerTlsFiles, type TlsServerFiles, type TlsServerOptions } from "../net/tls.js";
import { UsageError } from "./exit-codes.js";

/** The TLS flags of `kiln up`, `kiln server` and `kiln cache`. */
export interface ServerTlsFlags {
  tls?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
}

/** What a server command serves TLS with. */
export interface ServerTls {
  options: TlsServerOptions;
  files: TlsServerFiles;
  /** The local CA's certificate, when `--tls` generated one: what clients trust. */
  localCa?: { file: string; fingerprint: string };
}

/** Adds `--tls`, `--tls-cert`, `--tls-key` and (where the command can check clients) `--tls-client-ca`. */
export function addServerTlsOptions(command: Command, { clientCa }: { clientCa: boolean }): Command {
  command
    .option("--tls", "serve TLS with a local CA and certificate made in <data-dir>/tls (kept across restarts)")
    .option("--tls-cert <file>", "serve TLS with this certificate (PEM, with its chain); needs --tls-key")
    .option("--tls-key <file>", "the key of --tls-cert (PEM)");
  if (clientCa)
    command.addOption(
      new Option(
        "--tls-client-ca <file>",
        "require a client certificate signed by this CA (PEM): of agents when there is a --token, else of every connection",
      ),
    );
  return command;
}

/**
 * The TLS a server command serves, from its flags: the given files, or with
 * `--tls` alone a local CA and server certificate for `host` in `tlsDir`
 * (made once, then reused). Undefined for cleartext.
 *
 * @example
 * const tls = resolveServerTls(flags, path.join(dataDir, "tls"), "127.0.0.1");
 */
export function resolveServerTls(flags: ServerTlsFlags, tlsDir: string, host: string): ServerTls | undefined {
  if (flags.tlsCert !== undefined && flags.tlsKey === undefined)
    throw new UsageError("--tls-cert needs --tls-key (the certificate's private key)");
  if (flags.tlsKey !== undefined && flags.tlsCert === undefined)
    throw new UsageError("--tls-key needs --tls-cert (the certificate it belongs to)");
  const clientCa = flags.tlsClientCa !== undefined ? { clientCaFile: path.resolve(flags.tlsClientCa) } : {};
  if (flags.tlsCert !== undefined && flags.tlsKey !== undefined) {
    const files = { certFile: path.resolve(flags.tlsCert), keyFile: path.resolve(flags.tlsKey), ...clientCa };
    return { options: readServerTlsFiles(files), files };
  }
  if (!flags.tls) {
    if (flags.tlsClientCa !== undefined)
      throw new UsageError("--tls-client-ca needs TLS: give --tls, or --tls-cert and --tls-key");
    return undefined;
  }
  const local = ensureLocalTls(tlsDir, serverNames(host));
  const files = { certFile: local.certFile, keyFile: local.keyFile, ...clientCa };
  return {
    options: readServerTlsFiles(files),
    files,
    localCa: { file: local.caFile, fingerprint: local.caFingerprint },
  };
}
