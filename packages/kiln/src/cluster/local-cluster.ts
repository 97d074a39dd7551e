import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_CACHE_PORT } from "../cache/server.js";
import { SECRET_ENV_VARS } from "../net/credentials.js";
import { startControlPlane, type ControlPlane, type ControlPlaneOptions } from "../control/server.js";
import { readServerTlsFiles, type TlsServerFiles } from "../net/tls.js";
import { superviseProcess, type SupervisedProcess } from "./supervised-process.js";
import { isReportedStartFailure } from "./supervisor-channel.js";

export interface LocalClusterOptions {
  dataDir?: string;
  host?: string;
  port?: number;
  /** Object cache port; default port + 2 (7422), or one the kernel picks when `port` is 0. */
  cachePort?: number;
  /** Executors on the local node; also its advertised cpu count. Default: the machine's cpus. */
  executors?: number;
  token?: string;
  /**
   * Serve the control plane and the cache over TLS with these files; the
   * agent verifies them with `caFile` (and hands it to service processes).
   */
  tls?: Omit<TlsServerFiles, "clientCaFile"> & { caFile?: string };
  log?: (line: string) => void;
  /** Extra control-plane settings (timeouts, retries…). */
  controlPlane?: Partial<ControlPlaneOptions>;
  /** Limits on what one package may extract to on the local agent (`kiln agent --max-package-*`). */
  maxPackageBytes?: number;
  maxPackageEntries?: number;
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

/**
 * `kiln up`: the object cache (fs backend) and one node agent as supervised
 * child processes (so they use every core), and the control plane in this
 * process, on embedded defaults. Started in that order: the control plane
 * tells clients where the cache is, and the agent needs both. Resolves once
 * the cache serves and the agent's node is registered; the children stop
 * when this process ends, however it ends (see supervised-process.ts).
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
  // The token goes to the children over stdin (--token-file -), never in their environment or arguments,
  // which the agent's service processes could read from /proc.
  const env = { ...process.env };
  for (const name of SECRET_ENV_VARS) delete env[name];
  const tokenArgs = options.token ? ["--token-file", "-"] : [];
  const children: SupervisedProcess[] = [];
  let cp: ControlPlane | undefined;
  const stopAll = async () => {
    await Promise.all(children.map((c) => c.stop()));
    await cp?.close();
  };
  const supervise = (name: string, logName: string, args: () => string[]): SupervisedProcess => {
    const child = superviseProcess({
      name,
      args: () => [CLI_ENTRY, ...tokenArgs, ...args()],
      env,
      ...(options.token ? { stdin: `${options.token}\n` } : {}),
      logFile: path.join(dataDir, logName),
      log,
    });
    children.push(child);
    return child;
  };

  try {
    // Port 0: the cache takes one the kernel picks and reports it; a restart asks for the same one again.
    let cachePort = cachePortFor(options);
    const cache = supervise("object cache", "cache.log", () => {
      const args = ["cache", "--port", String(cachePort), "--data-dir", path.join(dataDir, "cache")];
      if (options.tls) args.push("--tls-cert", options.tls.certFile, "--tls-key", options.tls.keyFile);
      return options.host !== undefined ? [...args, "--host", options.host] : args;
    });
    const cacheEndpoint = (await readyWithin(cache, "the object cache", dataDir, "cache.log")).endpoint!;
    cachePort = Number(new URL(cacheEndpoint).port);

    cp = await startControlPlane({
      ...options.controlPlane,
      dataDir,
      ...(options.host !== undefined ? { host: options.host } : {}),
      ...(options.port !== undefined ? { port: options.port } : {}),
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.tls ? { tls: readServerTlsFiles(options.tls) } : {}),
      cacheEndpoint,
      log,
    });

    const executors = options.executors ?? os.availableParallelism();
    const agentArgs = ["agent", "--endpoint", cp.endpoint, "--executors", String(executors)];
    // On one machine, --executors N means N executors: offer at least that many cpus (the default request is cpu=1).
    if (options.executors !== undefined)
      agentArgs.push("--cpus", String(Math.max(executors, os.availableParallelism())));
    agentArgs.push("--work-dir", path.join(dataDir, "agent"), "--cache-endpoint", cacheEndpoint);
    if (options.maxPackageBytes !== undefined) agentArgs.push("--max-package-bytes", String(options.maxPackageBytes));
    if (options.maxPackageEntries !== undefined)
      agentArgs.push("--max-package-entries", String(options.maxPackageEntries));
    if (options.tls?.caFile) agentArgs.push("--tls-ca", options.tls.caFile);
    const agent = supervise("agent", "agent.log", () => agentArgs);
    await readyWithin(agent, "the local agent", dataDir, "agent.log");

    return {
      endpoint: cp.endpoint,
      cacheEndpoint,
      dataDir,
      agentPid: () => agent.pid(),
      cachePid: () => cache.pid(),
      close: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** The cache listens on port + 2 (7422 by default), or on one the kernel picks when the cluster's port is 0. */
function cachePortFor(options: LocalClusterOptions): number {
  if (options.cachePort !== undefined) return options.cachePort;
  if (options.port === 0) return 0;
  return options.port !== undefined ? options.port + 2 : DEFAULT_CACHE_PORT;
}

/**
 * The child's ready report, within READY_TIMEOUT_MS. Its own start failure
 * (e.g. a PortInUseError) comes out as it is; a hang or crash loop comes out
 * with the tail of its log.
 */
async function readyWithin(
  child: SupervisedProcess,
  what: string,
  dataDir: string,
  logName: string,
): Promise<{ endpoint?: string }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not start within ${READY_TIMEOUT_MS} ms`)),
      READY_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([child.ready, timeout]);
  } catch (err) {
    if (isReportedStartFailure(err)) throw err;
    throw new Error(`${(err as Error).message}\n${what}'s log (${path.join(dataDir, logName)}):\n${child.logTail()}`);
  } finally {
    clearTimeout(timer);
  }
}
