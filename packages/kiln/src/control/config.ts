import { InvalidArgumentError, parseResreq, type Resources } from "@kiln/protocol";
import { TASK_ENVELOPE_BYTES } from "./request-limits.js";
import { parseStoreUrl } from "./store/open-store.js";
import { normalizeEndpoint } from "@kiln/sdk";
import type { TlsServerOptions } from "../net/tls.js";

export interface ControlPlaneOptions {
  /** Directory holding the SQLite file (unless `store` names a database) and the control plane's other files. */
  dataDir: string;
  /**
   * Where the state lives instead of the SQLite file in `dataDir`: a PostgreSQL URL,
   * postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (`kiln server --store`).
   */
  store?: string;
  /** Default 127.0.0.1. Any other address requires `token`. */
  host?: string;
  /** HTTP/2 port (gRPC, Connect). Default 7420; 0 picks a free port. */
  port?: number;
  /** HTTP/1.1 port (Connect JSON). Default port + 1 (or a free port when port is 0). */
  httpPort?: number;
  token?: string;
  /**
   * The node token: admits agents (kiln.v1.Agent) and nothing else. Without
   * it agents use `token`. Needs `token`, and must differ from it.
   */
  nodeToken?: string;
  /**
   * Serve both ports over TLS (HTTP/2 with ALPN h2, and HTTPS) with this
   * certificate; with `clientCa`, a client certificate it signed is the credential (no token),
   * or, beside a token, what the agent protocol needs as well (mutual TLS for nodes).
   */
  tls?: TlsServerOptions;
  /**
   * The object cache this control plane tells clients about (GetClusterInfo),
   * e.g. http://10.0.0.5:7422, so they need not be configured with it.
   */
  cacheEndpoint?: string;
  /** Close an agent stream that sent nothing for this long. Default 15 s. */
  heartbeatTimeoutMs?: number;
  /**
   * After a node's stream ends, wait this long for it to come back before requeueing its tasks. Default 30 s;
   * at least heartbeatTimeoutMs (a node cut off silently is only noticed after that long).
   */
  drainTimeoutMs?: number;
  /**
   * Heartbeat interval agents are told to use. Default: a third of heartbeatTimeoutMs, at most 5 s, so
   * two heartbeats can be missed before a node counts as lost. At most half of heartbeatTimeoutMs.
   */
  heartbeatIntervalMs?: number;
  /** How many times a task whose executor was lost is requeued before it fails. Default 3. */
  retries?: number;
  /** Bind failures in a row before a session's pending tasks fail. Default 5. */
  bindRetryLimit?: number;
  /** Largest task input or common data accepted, bytes. Default 16 MiB. */
  maxTaskBytes?: number;
  /**
   * Pending tasks a session keeps in memory; those past them wait only in the store and are read back
   * in order as executors take tasks. Default 10,000.
   */
  pendingTasksInMemory?: number;
  /**
   * Largest request carrying many tasks (CreateTasks, each SubmitTasks message) or an agent's batch of
   * results (each Agent stream message), bytes. Default 64 MiB; at least maxTaskBytes + 64 KiB.
   */
  maxRequestBytes?: number;
  /** Resources given to sessions that ask for none (or leave one out). Default cpu=1,mem=1g,gpu=0. */
  defaultResreq?: string;
  /** Scheduling tick for timers (delay release, backoff). Default 100 ms. */
  scheduleIntervalMs?: number;
  /** "full" also survives power loss; "normal" (default) survives process kills. */
  durability?: "normal" | "full";
  /**
   * Closed sessions (their tasks and events) are deleted once closed this long. Default 7 days;
   * 0 keeps nothing after close.
   */
  retentionMs?: number;
  /**
   * Bytes each session watcher may hold unsent (updates waiting for a slow client); past it the
   * watcher is dropped to a sequence number and resynchronised from the store. Default 4 MiB.
   */
  watchBufferBytes?: number;
  /** A session watcher behind for this long has its stream ended (RESOURCE_EXHAUSTED). Default 5 minutes. */
  watchBehindLimitMs?: number;
  log?: (line: string) => void;
}

export interface ControlPlaneConfig {
  dataDir: string;
  store: string | undefined;
  host: string;
  port: number;
  httpPort: number | undefined;
  token: string | undefined;
  nodeToken: string | undefined;
  tls: TlsServerOptions | undefined;
  cacheEndpoint: string | undefined;
  heartbeatTimeoutMs: number;
  drainTimeoutMs: number;
  heartbeatIntervalMs: number;
  retries: number;
  bindRetryLimit: number;
  maxTaskBytes: number;
  pendingTasksInMemory: number;
  maxRequestBytes: number;
  defaultResreq: Resources;
  scheduleIntervalMs: number;
  durability: "normal" | "full";
  retentionMs: number;
  watchBufferBytes: number;
  watchBehindLimitMs: number;
  log: (line: string) => void;
}

export const DEFAULT_PORT = 7420;
const BUILTIN_RESREQ: Resources = { cpu: 1, memory: 2 ** 30, gpu: 0 };

const MAX_HEARTBEAT_INTERVAL_MS = 5_000;
export const DEFAULT_RETENTION_MS = 7 * 24 * 3_600_000;

/**
 * The options with defaults filled in, or an InvalidArgumentError naming the first setting (and its
 * `kiln server` flag) that cannot work, alone or with another.
 */
export function resolveConfig(o: ControlPlaneOptions): ControlPlaneConfig {
  const config = withDefaults(o);
  checkConfig(config);
  return config;
}

function withDefaults(o: ControlPlaneOptions): ControlPlaneConfig {
  const heartbeatTimeoutMs = o.heartbeatTimeoutMs ?? 15_000;
  return {
    dataDir: o.dataDir,
    store: o.store,
    host: o.host ?? "127.0.0.1",
    port: o.port ?? DEFAULT_PORT,
    httpPort: o.httpPort,
    token: o.token || undefined,
    nodeToken: o.nodeToken || undefined,
    tls: o.tls,
    cacheEndpoint: o.cacheEndpoint === undefined ? undefined : normalizeEndpoint("cacheEndpoint", o.cacheEndpoint),
    heartbeatTimeoutMs,
    drainTimeoutMs: o.drainTimeoutMs ?? Math.max(30_000, heartbeatTimeoutMs),
    heartbeatIntervalMs:
      o.heartbeatIntervalMs ?? Math.min(MAX_HEARTBEAT_INTERVAL_MS, Math.floor(heartbeatTimeoutMs / 3)),
    retries: o.retries ?? 3,
    bindRetryLimit: o.bindRetryLimit ?? 5,
    maxTaskBytes: o.maxTaskBytes ?? 16 * 1024 * 1024,
    pendingTasksInMemory: o.pendingTasksInMemory ?? 10_000,
    maxRequestBytes: o.maxRequestBytes ?? 64 * 1024 * 1024,
    // A resource left out of --default-resreq keeps the built-in default.
    defaultResreq: {
      ...BUILTIN_RESREQ,
      ...(o.defaultResreq === undefined ? {} : parseResreq(o.defaultResreq, "defaultResreq")),
    },
    scheduleIntervalMs: o.scheduleIntervalMs ?? 100,
    durability: o.durability ?? "normal",
    retentionMs: o.retentionMs ?? DEFAULT_RETENTION_MS,
    watchBufferBytes: o.watchBufferBytes ?? 4 * 1024 * 1024,
    watchBehindLimitMs: o.watchBehindLimitMs ?? 5 * 60_000,
    log: o.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`)),
  };
}

function checkConfig(c: ControlPlaneConfig): void {
  const whole = (field: string, flag: string, value: number, min: number) => {
    if (!Number.isSafeInteger(value) || value < min)
      throw new InvalidArgumentError(field, `${value} (${flag}) must be a whole number of at least ${min}`);
  };
  whole("heartbeatTimeoutMs", "--heartbeat-timeout", c.heartbeatTimeoutMs, 2);
  whole("heartbeatIntervalMs", "the agents' heartbeat interval", c.heartbeatIntervalMs, 1);
  whole("drainTimeoutMs", "--drain-timeout", c.drainTimeoutMs, 0);
  whole("retries", "--retries", c.retries, 0);
  whole("bindRetryLimit", "bind retries", c.bindRetryLimit, 1);
  whole("maxTaskBytes", "--max-task-bytes", c.maxTaskBytes, 1);
  whole("pendingTasksInMemory", "pending tasks kept in memory", c.pendingTasksInMemory, 1);
  whole("maxRequestBytes", "--max-request-bytes", c.maxRequestBytes, 1);
  whole("scheduleIntervalMs", "the scheduling tick", c.scheduleIntervalMs, 1);
  whole("retentionMs", "--retention", c.retentionMs, 0);
  if (c.store !== undefined) parseStoreUrl(c.store);
  whole("watchBufferBytes", "the session watchers' bound", c.watchBufferBytes, 1);
  whole("watchBehindLimitMs", "the session watchers' time behind", c.watchBehindLimitMs, 1);
  if (c.heartbeatTimeoutMs < 2 * c.heartbeatIntervalMs)
    throw new InvalidArgumentError(
      "heartbeatTimeoutMs",
      `${c.heartbeatTimeoutMs} ms (--heartbeat-timeout) must be at least twice the heartbeat interval ` +
        `(${c.heartbeatIntervalMs} ms), or every node is dropped between two heartbeats`,
    );
  if (c.drainTimeoutMs < c.heartbeatTimeoutMs)
    throw new InvalidArgumentError(
      "drainTimeoutMs",
      `${c.drainTimeoutMs} ms (--drain-timeout) must be at least the heartbeat timeout ` +
        `(${c.heartbeatTimeoutMs} ms, --heartbeat-timeout): a node that went silent is only noticed after that long`,
    );
  if (c.maxRequestBytes < c.maxTaskBytes + TASK_ENVELOPE_BYTES)
    throw new InvalidArgumentError(
      "maxRequestBytes",
      `${c.maxRequestBytes} bytes (--max-request-bytes) must be at least --max-task-bytes (${c.maxTaskBytes}) ` +
        `+ 64 KiB, or a batch could not carry one task of the largest input`,
    );
}
