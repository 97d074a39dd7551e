import { InvalidArgumentError } from "@kiln/protocol";
import * as http from "node:http";
import * as https from "node:https";
import type * as net from "node:net";
import { checkExposure } from "../net/auth.js";
import { Credentials } from "../net/credentials.js";
import { portInUse } from "../net/port-in-use.js";
import { logRefusedConnections, serverTlsOptions, type TlsServerOptions } from "../net/tls.js";
import { RevokedSessions } from "./revocations.js";
import { cacheRoutes, type RouteContext } from "./routes.js";
import type { Catalog } from "./storage/backend.js";
import { DEFAULT_DURABILITY, FsCatalog, type FsStorageOptions } from "./storage/fs-backend.js";
import { MemoryCatalog, type MemoryStorageOptions } from "./storage/memory-backend.js";
import { ObjectStore, type CompactionOptions } from "./storage/object-store.js";

export type { FsStorageOptions } from "./storage/fs-backend.js";
export type { MemoryStorageOptions } from "./storage/memory-backend.js";
export type { CompactionOptions } from "./storage/object-store.js";

export const DEFAULT_CACHE_PORT = 7422;

/** A socket idle this long (no bytes either way) is closed, so a stalled upload cannot hold its key forever. */
const IDLE_TIMEOUT_MS = 120_000;

export interface CacheServerOptions {
  /** Default 127.0.0.1. Any non-loopback address requires `token`. */
  host?: string;
  /** Default 7422; 0 picks a free port. */
  port?: number;
  /**
   * The cluster token. When set, every request needs a credential: this token
   * (everything), the node token (reads only) or a task credential the control
   * plane minted with the same cluster token (its own application's keys).
   */
  token?: string;
  /** The node token agents present; without it agents use `token`. */
  nodeToken?: string;
  /**
   * Serve HTTPS with this certificate; with `clientCa`, a client certificate it signed is the credential
   * (no token), or, beside a token, what the node token needs as well (mutual TLS for nodes).
   */
  tls?: TlsServerOptions;
  /** The endpoint written into ObjectRefs (default `http://<host>:<port>`, `https://` with `tls`). */
  advertiseEndpoint?: string;
  storage: FsStorageOptions | MemoryStorageOptions;
  compaction?: CompactionOptions;
  /** Largest object (base + deltas) accepted, in bytes; larger bodies get 413. Default: no limit. */
  maxObjectBytes?: number;
  log?: (line: string) => void;
}

export interface CacheServer {
  endpoint: string;
  port: number;
  close(): Promise<void>;
}

/**
 * Starts the object cache: the HTTP API of docs/cache-api.md over the fs or
 * memory backend.
 *
 * @example
 * const cache = await startCacheServer({ port: 0, storage: { kind: "fs", dir: "/var/lib/kiln/cache" } });
 * await fetch(`${cache.endpoint}/v1/objects/app/s1/x`, { method: "PUT", body: "hello" });
 * await cache.close();
 */
export async function startCacheServer(options: CacheServerOptions): Promise<CacheServer> {
  const host = options.host ?? "127.0.0.1";
  checkExposure(host, options.token, options.tls?.clientCa);
  const credentials = new Credentials({ adminToken: options.token, nodeToken: options.nodeToken });
  // With a token, mutual TLS is for nodes: the node token needs a certificate too; clients and services use tokens.
  const tls =
    options.tls?.clientCa !== undefined && options.token
      ? { ...options.tls, clientCertificates: "nodes" as const }
      : options.tls;
  const serverOptions: https.ServerOptions = {
    // Uploads of any size may take longer than Node's default 5-minute request limit; idle sockets still time out.
    requestTimeout: 0,
    keepAliveTimeout: 5_000,
    ...(tls ? serverTlsOptions(tls) : {}),
  };
  const log = options.log ?? (() => undefined);
  const store = new ObjectStore(openCatalog(options.storage), {
    compaction: options.compaction,
    maxObjectBytes: options.maxObjectBytes,
    log,
  });
  const ctx: RouteContext = {
    store,
    endpoint: "",
    credentials,
    revoked: new RevokedSessions(),
    nodesNeedCertificates: tls?.clientCertificates === "nodes",
    log,
  };
  let server: http.Server;
  if (options.tls) {
    const tlsServer = https.createServer(serverOptions, cacheRoutes(ctx));
    logRefusedConnections(tlsServer, log);
    server = tlsServer;
  } else {
    server = http.createServer(serverOptions, cacheRoutes(ctx));
  }
  server.timeout = IDLE_TIMEOUT_MS;
  const port = options.port ?? DEFAULT_CACHE_PORT;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    }).catch(portInUse(port, "cache"));
  } catch (err) {
    await store.close();
    throw err;
  }
  const { port: boundPort } = server.address() as net.AddressInfo;
  ctx.endpoint = options.advertiseEndpoint ?? `${options.tls ? "https" : "http"}://${shownHost(host)}:${boundPort}`;
  log(`cache listening on ${ctx.endpoint} (${describe(options.storage)})`);

  return {
    endpoint: ctx.endpoint,
    port: boundPort,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await store.close();
    },
  };
}

function openCatalog(storage: CacheServerOptions["storage"]): Catalog {
  if (storage.kind === "fs") {
    if (!storage.dir) throw new InvalidArgumentError("storage.dir", "must name a directory");
    return new FsCatalog(storage);
  }
  if (!Number.isSafeInteger(storage.maxBytes) || storage.maxBytes < 0)
    throw new InvalidArgumentError("storage.maxBytes", `${storage.maxBytes} must be a byte count`);
  if (!storage.spillDir) throw new InvalidArgumentError("storage.spillDir", "must name a directory");
  if (storage.maxSpillBytes !== undefined && !(storage.maxSpillBytes >= 0))
    throw new InvalidArgumentError("storage.maxSpillBytes", `${storage.maxSpillBytes} must be a byte count`);
  return new MemoryCatalog(storage);
}

/** A wildcard address is not something a client can dial: advertise loopback instead. */
function shownHost(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "[::1]";
  return host.includes(":") ? `[${host}]` : host;
}

function describe(storage: CacheServerOptions["storage"]): string {
  return storage.kind === "fs"
    ? `fs: ${storage.dir}, durability ${storage.durability ?? DEFAULT_DURABILITY}`
    : `memory: maxBytes ${storage.maxBytes}, spill to ${storage.spillDir}`;
}
