import { createClient } from "@connectrpc/connect";
import { createClusterTransport } from "@kiln/sdk/internal";
import { flame } from "@kiln/sdk/proto";
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { startControlPlane, type ControlPlaneOptions } from "../control/server.js";

export interface LocalClusterOptions {
  dataDir?: string;
  host?: string;
  port?: number;
  /** Executors on the local node; also its advertised cpu count. Default: the machine's cpus. */
  executors?: number;
  token?: string;
  log?: (line: string) => void;
  /** Extra control-plane settings (timeouts, retries…). */
  controlPlane?: Partial<ControlPlaneOptions>;
}

export interface LocalCluster {
  endpoint: string;
  dataDir: string;
  /** Pid of the agent process (it is restarted if it dies). */
  agentPid(): number | undefined;
  close(): Promise<void>;
}

const CLI_ENTRY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../cli/main.js");
const AGENT_READY_TIMEOUT_MS = 20_000;
const AGENT_STOP_TIMEOUT_MS = 20_000;

/**
 * `kiln up`: the control plane in this process and one node agent as a
 * child process (so the two use both cores), on embedded defaults. Resolves
 * once the agent's node is registered.
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
  const agentLog = path.join(dataDir, "agent.log");
  const executors = options.executors ?? os.availableParallelism();
  const args = [CLI_ENTRY, "agent", "--endpoint", cp.endpoint, "--executors", String(executors)];
  // On one machine, --executors N means N executors: offer at least that many cpus (the default request is cpu=1).
  if (options.executors !== undefined) args.push("--cpus", String(Math.max(executors, os.availableParallelism())));
  args.push("--work-dir", path.join(dataDir, "agent"));
  const env = { ...process.env, ...(options.token ? { KILN_TOKEN: options.token } : {}) };

  let child: ChildProcess | undefined;
  let closing = false;
  const restarts: number[] = [];
  const startAgent = () => {
    const out = fs.openSync(agentLog, "a");
    child = spawn(process.execPath, args, { stdio: ["ignore", out, out], env });
    fs.closeSync(out);
    child.once("exit", (code, signal) => {
      child = undefined;
      if (closing) return;
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && now - restarts[0]! > 60_000) restarts.shift();
      if (restarts.length > 5) {
        log(`agent keeps exiting (last: code ${code}, signal ${signal}); not restarting. See ${agentLog}`);
        return;
      }
      log(`agent exited (code ${code}, signal ${signal}); restarting. See ${agentLog}`);
      setTimeout(() => !closing && startAgent(), 500).unref();
    });
  };
  startAgent();

  const stopAgent = async () => {
    closing = true;
    const c = child;
    if (!c) return;
    const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    c.kill("SIGTERM");
    const timer = setTimeout(() => c.kill("SIGKILL"), AGENT_STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  };

  try {
    await waitForNode(cp.endpoint, options.token, AGENT_READY_TIMEOUT_MS);
  } catch (err) {
    await stopAgent();
    await cp.close();
    const tail = fs.existsSync(agentLog) ? fs.readFileSync(agentLog, "utf8").split("\n").slice(-15).join("\n") : "";
    throw new Error(`${(err as Error).message}\nagent log (${agentLog}):\n${tail}`);
  }
  return {
    endpoint: cp.endpoint,
    dataDir,
    agentPid: () => child?.pid,
    async close() {
      await stopAgent();
      await cp.close();
    },
  };
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
