import { createClient } from "@connectrpc/connect";
import { createClusterTransport } from "@kiln/protocol/transport";
import { flame } from "@kiln/protocol/proto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_CACHE_PORT } from "../cache/server.js";
import { startControlPlane, type ControlPlaneOptions } from "../control/server.js";
import { logSize, readyLine } from "./ready-line.js";
import { superviseProcess, type SupervisedProcess } from "./supervised-process.js";

export interface LocalClusterOptions {
  dataDir?: string;
  host?: string;
  port?: number;
  /** Object cache port; default port + 2 (7422), or one the kernel picks when `port` is 0. */
  cachePort?: number;
  /** Executors on the local node; also its advertised cpu count. Default: the machine's cpus. */
  executors?: number;
  token?: string;
  log?: (line: string) => void;
  /** Extra control-plane settings (timeouts, retries…). */
  controlPlane?: Partial<ControlPlaneOptions>;
}

export interface LocalCluster {
  endpoint: string;
  /** The object cache (a child process, data in `<dataDir>/cache`). */
  cacheEndpoint: string;
  dataDir: string;
  /** Pid of the agent process (it is restarted if it dies). */
  agentPid(): number | undefined;
  /** Pid of the object cache process (restarted likewise). */
  cachePid(): number | undefined;
  close(): Promise<void>;
}

const CLI_ENTRY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../cli/main.js");
const READY_TIMEOUT_MS = 20_000;
/** What `kiln cache` prints once it listens (see cli/commands/cache.ts). */
const CACHE_READY = /object cache listening at (http:\/\/\S+) /;

/**
 * `kiln up`: the control plane in this process, the object cache (fs
 * backend) and one node agent as supervised child processes (so they use
 * every core), on embedded defaults. Resolves once the cache answers and the
 * agent's node is registered.
 *
 * @example
 * const cluster = await startLocalCluster({ dataDir: "/tmp/kiln", port: 0 });
 * // … connect({ endpoint: cluster.endpoint }) …
 * await cluster.close();
 */
export async function startLocalCluster(options: LocalClusterOptions = {}): Promise<LocalCluster> {
  const dataDir = options.dataDir ?? path.join(os.homedir(), ".kiln", "data");
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  fs.mkdirSync(dataDir, { recursive: true });
  const cp = await startControlPlane({
    ...options.controlPlane,
    dataDir,
    ...(options.host !== undefined ? { host: options.host } : {}),
    ...(options.port !== undefined ? { port: options.port } : {}),
    ...(options.token !== undefined ? { token: options.token } : {}),
    log,
  });
  const env = { ...process.env, ...(options.token ? { KILN_TOKEN: options.token } : {}) };
  const children: SupervisedProcess[] = [];
  const stopAll = async () => {
    await Promise.all(children.map((c) => c.stop()));
    await cp.close();
  };

  // Port 0: the cache binds one the kernel picks and prints it; a restart asks for that one again.
  let cachePort = cachePortFor(options);
  const cacheLog = path.join(dataDir, "cache.log");
  const cacheLogStart = logSize(cacheLog);
  const cache = superviseProcess({
    name: "object cache",
    args: () => {
      const args = [CLI_ENTRY, "cache", "--port", String(cachePort), "--data-dir", path.join(dataDir, "cache")];
      return options.host !== undefined ? [...args, "--host", options.host] : args;
    },
    env,
    logFile: cacheLog,
    log,
  });
  children.push(cache);
  if (cachePort === 0) {
    try {
      const [, listening] = await readyLine(cacheLog, cacheLogStart, CACHE_READY, READY_TIMEOUT_MS);
      cachePort = Number(new URL(listening!).port);
    } catch (err) {
      await stopAll();
      throw new Error(`${(err as Error).message}\ncache log (${cacheLog}):\n${cache.logTail()}`);
    }
  }
  const cacheEndpoint = `http://${connectHost(options.host)}:${cachePort}`;

  const executors = options.executors ?? os.availableParallelism();
  const agentArgs = [CLI_ENTRY, "agent", "--endpoint", cp.endpoint, "--executors", String(executors)];
  // On one machine, --executors N means N executors: offer at least that many cpus (the default request is cpu=1).
  if (options.executors !== undefined) agentArgs.push("--cpus", String(Math.max(executors, os.availableParallelism())));
  agentArgs.push("--work-dir", path.join(dataDir, "agent"), "--cache-endpoint", cacheEndpoint);
  const agent = superviseProcess({
    name: "agent",
    args: () => agentArgs,
    env,
    logFile: path.join(dataDir, "agent.log"),
    log,
  });
  children.push(agent);

  try {
    await Promise.all([
      waitForCache(cacheEndpoint, options.token, READY_TIMEOUT_MS).catch((err: Error) => {
        throw new Error(`${err.message}\ncache log (${path.join(dataDir, "cache.log")}):\n${cache.logTail()}`);
      }),
      waitForNode(cp.endpoint, options.token, READY_TIMEOUT_MS).catch((err: Error) => {
        throw new Error(`${err.message}\nagent log (${path.join(dataDir, "agent.log")}):\n${agent.logTail()}`);
      }),
    ]);
  } catch (err) {
    await stopAll();
    throw err;
  }
  return {
    endpoint: cp.endpoint,
    cacheEndpoint,
    dataDir,
    agentPid: () => agent.pid(),
    cachePid: () => cache.pid(),
    close: stopAll,
  };
}

/** The cache listens on port + 2 (7422 by default), or on one the kernel picks when the cluster's port is 0. */
function cachePortFor(options: LocalClusterOptions): number {
  if (options.cachePort !== undefined) return options.cachePort;
  if (options.port === 0) return 0;
  return options.port !== undefined ? options.port + 2 : DEFAULT_CACHE_PORT;
}

/** Where a client on this machine reaches a server listening on `host`. */
function connectHost(host: string | undefined): string {
  if (!host || host === "0.0.0.0" || host === "::") return "127.0.0.1";
  return host.includes(":") ? `[${host}]` : host;
}

async function waitForCache(endpoint: string, token: string | undefined, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  while (Date.now() < deadline) {
    const ok = await fetch(`${endpoint}/v1/health`, { headers, signal: AbortSignal.timeout(2_000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the object cache did not answer at ${endpoint} within ${timeoutMs} ms`);
}

async function waitForNode(endpoint: string, token: string | undefined, timeoutMs: number): Promise<void> {
  const { transport, close } = createClusterTransport({ endpoint, ...(token ? { token } : {}) });
  const client = createClient(flame.Frontend, transport);
  const deadline = Date.now() + timeoutMs;
  try {
    while (Date.now() < deadline) {
      const { nodes } = await client.listNodes({});
      if (nodes.some((n) => n.status?.state === flame.NodeState.Ready)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the local agent did not register within ${timeoutMs} ms`);
  } finally {
    close();
  }
}
