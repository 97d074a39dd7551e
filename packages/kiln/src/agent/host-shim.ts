import { signalProcessGroup } from "../util/process-group.js";
import { acceptsConnections } from "@kiln/protocol/transport";
import { kiln, type flame } from "@kiln/protocol/proto";
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { resolveBuiltinCommand } from "../apps/service-entry.js";
import { SECRET_ENV_VARS } from "../net/credentials.js";
import { BindError } from "./bind-error.js";
import { expandVars } from "./expand-vars.js";
import type { InstalledRelease } from "./installer.js";

/** Everything needed to run one service process for one executor. */
export interface ServiceProcessOptions {
  executorId: string;
  sessionId: string;
  application: flame.ApplicationSpec;
  /** The application's installed package: the default cwd, and variables (KILN_APP_DIR, PATH) under the application's own. */
  release?: InstalledRelease;
  /** The control plane, passed on so the service can be a client of the cluster. */
  controlPlaneEndpoint: string;
  /** The object cache, passed on so the service can read and write objects. */
  cacheEndpoint?: string;
  /** The session's task credential (the Bind's), the service's KILN_TOKEN; empty on a cluster without tokens. */
  taskCredential: string;
  /** The CA file the agent trusts, passed on (KILN_TLS_CA) so the service verifies the same servers. */
  tlsCaFile?: string;
  socketPath: string;
  /** The executor's own temp dir: TMPDIR, and the cwd unless the application names one or has a package. */
  tempDir: string;
  /** `<logDir>/<executor-id>.stdout.log` / `.stderr.log` are appended to. */
  logDir: string;
  socketTimeoutMs: number;
  /** Aborting stops the start: the process is killed and the start throws. */
  signal?: AbortSignal;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const SOCKET_POLL_MS = 20;
const STDERR_TAIL_LINES = 20;
const STDERR_TAIL_BYTES = 16 * 1024;
// After the exit event, stderr may still hold the process's last words.
const STDERR_DRAIN_MS = 100;

/** `exited with code 3 (signal none)`. */
export function describeExit(info: ExitInfo): string {
  return `exited with code ${info.code ?? "none"} (signal ${info.signal ?? "none"})`;
}

/** One running service process (the leader of its own process group). */
export class ServiceProcess {
  /** Resolves once the process has exited and been reaped. */
  readonly exited: Promise<ExitInfo>;
  private stderr = "";
  private exitInfo: ExitInfo | undefined;

  constructor(
    private readonly child: ChildProcess,
    readonly socketPath: string,
    stderrLog: fs.WriteStream,
  ) {
    child.stderr?.on("data", (chunk: Buffer) => {
      stderrLog.write(chunk);
      this.stderr = (this.stderr + chunk.toString("utf8")).slice(-STDERR_TAIL_BYTES);
    });
    const stderrDone = new Promise<void>((resolve) => {
      if (!child.stderr) resolve();
      child.stderr?.once("close", resolve);
    });
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        // Children of the service may outlive it in its group; they go with it.
        this.signalGroup("SIGKILL");
        void Promise.race([stderrDone, sleep(STDERR_DRAIN_MS)]).then(() => {
          stderrLog.end();
          resolve({ code, signal });
        });
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** The last lines the process wrote to stderr. */
  stderrTail(): string {
    const lines = this.stderr.trimEnd().split("\n");
    return lines.slice(-STDERR_TAIL_LINES).join("\n");
  }

  /** `exited with code X (signal S); stderr tail: …`, for messages about an exit. */
  explainExit(info: ExitInfo): string {
    const tail = this.stderrTail();
    return `${describeExit(info)}; stderr tail: ${tail === "" ? "(empty)" : tail}`;
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs`; resolves once reaped. */
  async stop(graceMs = 5_000): Promise<ExitInfo> {
    if (this.exitInfo) return this.exited;
    this.signalGroup("SIGTERM");
    const timer = setTimeout(() => this.signalGroup("SIGKILL"), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  private signalGroup(signal: NodeJS.Signals): void {
    signalProcessGroup(this.pid, signal);
  }
}

/** Where the agent may have found its client certificate (the SDK's env names); not passed on. */
const AGENT_TLS_CREDENTIALS = ["KILN_TLS_CLIENT_CERT", "KILN_TLS_CLIENT_KEY"];

/**
 * The service's environment: the agent's without its secrets (tokens, client certificate), the
 * package's, the application's (expanded), then Kiln's own variables.
 */
export function serviceEnvironment(o: ServiceProcessOptions): NodeJS.ProcessEnv {
  const kilnVars: NodeJS.ProcessEnv = {
    KILN_INSTANCE_ENDPOINT: o.socketPath,
    FLAME_INSTANCE_ENDPOINT: o.socketPath,
    KILN_ENDPOINT: o.controlPlaneEndpoint,
    FLAME_ENDPOINT: o.controlPlaneEndpoint,
    ...(o.cacheEndpoint ? { KILN_CACHE_ENDPOINT: o.cacheEndpoint, FLAME_CACHE_ENDPOINT: o.cacheEndpoint } : {}),
    ...(o.tlsCaFile ? { KILN_TLS_CA: o.tlsCaFile } : {}),
    KILN_EXECUTOR_ID: o.executorId,
    KILN_SESSION_ID: o.sessionId,
    KILN_AGENT_PID: String(process.pid),
    TMPDIR: o.tempDir,
  };
  const inherited: NodeJS.ProcessEnv = { ...process.env };
  // The agent's tokens and client certificate are its own credentials: user code never gets them.
  for (const name of [...SECRET_ENV_VARS, ...AGENT_TLS_CREDENTIALS]) delete inherited[name];
  const env: NodeJS.ProcessEnv = { ...inherited, ...o.release?.env, ...kilnVars };
  for (const { name, value } of o.application.environments) env[name] = expandVars(value, env);
  Object.assign(env, kilnVars);
  // Set last, so an application cannot name a token of its own in place of the one minted for it.
  if (o.taskCredential) env.KILN_TOKEN = o.taskCredential;
  return env;
}

function waitForSpawn(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", reject);
  });
}

async function waitForSocket(p: ServiceProcess, o: ServiceProcessOptions): Promise<void> {
  const deadline = Date.now() + o.socketTimeoutMs;
  let exit: ExitInfo | undefined;
  void p.exited.then((info) => (exit = info));
  for (;;) {
    if (o.signal?.aborted)
      throw new BindError(kiln.BindFailure.PROCESS_START, "the executor was unbound while starting");
    if (exit) {
      throw new BindError(
        kiln.BindFailure.PROCESS_START,
        `service process ${p.explainExit(exit)} (before opening its socket)`,
      );
    }
    if (await acceptsConnections(o.socketPath)) return;
    if (Date.now() > deadline) {
      throw new BindError(
        kiln.BindFailure.PROCESS_START,
        `service process did not open its socket ${o.socketPath} within ${o.socketTimeoutMs} ms ` +
          `(it must serve on $KILN_INSTANCE_ENDPOINT or $FLAME_INSTANCE_ENDPOINT); stderr tail: ${p.stderrTail() || "(empty)"}`,
      );
    }
    await sleep(SOCKET_POLL_MS);
  }
}

/**
 * Starts the application's command as a service process and waits until it
 * accepts connections on its socket. Throws BindError(PROCESS_START) when the
 * command cannot start, exits first, or never opens the socket.
 *
 * @example
 * const p = await startServiceProcess({ executorId, sessionId, application, controlPlaneEndpoint,
 *   socketPath, tempDir, logDir, socketTimeoutMs: 30_000 });
 * await p.stop();
 */
export async function startServiceProcess(o: ServiceProcessOptions): Promise<ServiceProcess> {
  const fail = (message: string) => new BindError(kiln.BindFailure.PROCESS_START, message);
  const env = serviceEnvironment(o);
  if (!o.application.command) throw fail("the application has no command to run");
  let resolved: { command: string; args: string[] };
  try {
    resolved = resolveBuiltinCommand(o.application.command, o.application.arguments);
  } catch (err) {
    throw fail((err as Error).message);
  }
  const command = expandVars(resolved.command, env);
  const args = resolved.args.map((a) => expandVars(a, env));
  const cwd = o.application.workingDirectory
    ? expandVars(o.application.workingDirectory, env)
    : (o.release?.dir ?? o.tempDir);
  if (!fs.statSync(cwd, { throwIfNoEntry: false })?.isDirectory())
    throw fail(`working directory ${cwd} does not exist or is not a directory`);

  fs.rmSync(o.socketPath, { force: true });
  fs.mkdirSync(o.logDir, { recursive: true });
  const logBase = path.join(o.logDir, o.executorId);
  const stdoutFd = fs.openSync(`${logBase}.stdout.log`, "a");
  let child: ChildProcess;
  try {
    child = spawn(command, args, { cwd, env, detached: true, stdio: ["ignore", stdoutFd, "pipe"] });
  } finally {
    fs.closeSync(stdoutFd);
  }
  try {
    await waitForSpawn(child);
  } catch (err) {
    throw fail(`cannot start ${JSON.stringify(command)}: ${(err as Error).message}`);
  }
  const p = new ServiceProcess(child, o.socketPath, fs.createWriteStream(`${logBase}.stderr.log`, { flags: "a" }));
  try {
    await waitForSocket(p, o);
    return p;
  } catch (err) {
    await p.stop(0);
    throw err;
  }
}
