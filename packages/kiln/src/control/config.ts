import { parseResreq, type Resources } from "@kiln/protocol";
import { normalizeEndpoint } from "@kiln/sdk";
import type { TlsServerOptions } from "../net/tls.js";

export interface ControlPlaneOptions {
  /** Directory holding the SQLite file. */
  dataDir: string;
  /** Default 127.0.0.1. Any other address requires `token`. */
  host?: string;
  /** HTTP/2 port (gRPC, Connect). Default 7420; 0 picks a free port. */
  port?: number;
  /** HTTP/1.1 port (Connect JSON). Default port + 1 (or a free port when port is 0). */
  httpPort?: number;
  token?: string;
  /**
   * Serve both ports over TLS (HTTP/2 with ALPN h2, and HTTPS) with this
   * certificate; with `clientCa`, every client must present a certificate it signed.
   */
  tls?: TlsServerOptions;
  /**
   * The object cache this control plane tells clients about (GetClusterInfo),
   * e.g. http://10.0.0.5:7422, so they need not be configured with it.
   */
  cacheEndpoint?: string;
  /** Close an agent stream that sent nothing for this long. Default 15 s. */
  heartbeatTimeoutMs?: number;
  /** After a node's stream ends, wait this long for it to come back before requeueing its tasks. Default 30 s. */
  drainTimeoutMs?: number;
  /** Heartbeat interval agents are told to use. Default 5 s. */
  heartbeatIntervalMs?: number;
  /** How many times a task whose executor was lost is requeued before it fails. Default 3. */
  retries?: number;
  /** Bind failures in a row before a session's pending tasks fail. Default 5. */
  bindRetryLimit?: number;
  /** Largest task input or common data accepted, bytes. Default 16 MiB. */
  maxTaskBytes?: number;
  /** Resources given to sessions that ask for none (or leave one out). Default cpu=1,mem=1g,gpu=0. */
  defaultResreq?: string;
  /** Scheduling tick for timers (delay release, backoff). Default 100 ms. */
  scheduleIntervalMs?: number;
  /** "full" also survives power loss; "normal" (default) survives process kills. */
  durability?: "normal" | "full";
  log?: (line: string) => void;
}

export interface ControlPlaneConfig {
  dataDir: string;
  host: string;
  port: number;
  httpPort: number | undefined;
  token: string | undefined;
  tls: TlsServerOptions | undefined;
  cacheEndpoint: string | undefined;
  heartbeatTimeoutMs: number;
  drainTimeoutMs: number;
  heartbeatIntervalMs: number;
  retries: number;
  bindRetryLimit: number;
  maxTaskBytes: number;
  defaultResreq: Resources;
  scheduleIntervalMs: number;
  durability: "normal" | "full";
  log: (line: string) => void;
}

export const DEFAULT_PORT = 7420;
const BUILTIN_RESREQ: Resources = { cpu: 1, memory: 2 ** 30, gpu: 0 };

export function resolveConfig(o: ControlPlaneOptions): ControlPlaneConfig {
  return {
    dataDir: o.dataDir,
    host: o.host ?? "127.0.0.1",
    port: o.port ?? DEFAULT_PORT,
    httpPort: o.httpPort,
    token: o.token || undefined,
    tls: o.tls,
    cacheEndpoint: o.cacheEndpoint === undefined ? undefined : normalizeEndpoint("cacheEndpoint", o.cacheEndpoint),
    heartbeatTimeoutMs: o.heartbeatTimeoutMs ?? 15_000,
    drainTimeoutMs: o.drainTimeoutMs ?? 30_000,
    heartbeatIntervalMs: o.heartbeatIntervalMs ?? 5_000,
    retries: o.retries ?? 3,
    bindRetryLimit: o.bindRetryLimit ?? 5,
    maxTaskBytes: o.maxTaskBytes ?? 16 * 1024 * 1024,
    // A resource left out of --default-resreq keeps the built-in default.
    defaultResreq: {
      ...BUILTIN_RESREQ,
      ...(o.defaultResreq === undefined ? {} : parseResreq(o.defaultResreq, "defaultResreq")),
    },
    scheduleIntervalMs: o.scheduleIntervalMs ?? 100,
    durability: o.durability ?? "normal",
    log: o.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`)),
  };
}
