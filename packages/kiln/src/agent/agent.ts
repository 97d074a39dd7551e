import { create } from "@bufbuild/protobuf";
import { InvalidArgumentError } from "@kiln/protocol";
import { kiln } from "@kiln/protocol/proto";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type { TlsClientOptions } from "@kiln/protocol/transport";
import { readTlsFiles, type TlsFiles } from "@kiln/sdk";
import { ControlStream, DEFAULT_RECONNECT_MAX_DELAY_MS } from "./control-stream.js";
import { Executor, type ExecutorSetting } from "./executor.js";
import type { PackageSettings } from "./installer.js";
import { describeNode } from "./node-description.js";
import { Outbox } from "./outbox.js";

export interface AgentOptions {
  /** The control plane, e.g. http://127.0.0.1:7420. */
  endpoint: string;
  token?: string;
  /** Node name; default os.hostname(). */
  name?: string;
  /** Most executors (service processes) on this node; default os.availableParallelism(). */
  executors?: number;
  /** Advertised capacity; defaults: the machine's cpus and memory, GPUs from CUDA_VISIBLE_DEVICES. */
  cpus?: number;
  memoryBytes?: number;
  gpus?: number;
  /** Sockets, executor temp dirs, logs and packages; default <tmpdir>/kiln-agent-<pid>. */
  workDir?: string;
  /** How long a service process may take to open its socket; default 30000. */
  socketTimeoutMs?: number;
  /** The object cache that `cache://<key>` package URLs are fetched from, e.g. http://127.0.0.1:7422. */
  cacheEndpoint?: string;
  /** Bearer token for the cache endpoint. */
  cacheToken?: string;
  /**
   * For https endpoints (control plane and cache): the CA file to verify them
   * with, also handed to service processes as KILN_TLS_CA, and the client
   * certificate a control plane that requires mutual TLS checks (never handed on).
   */
  tls?: TlsFiles;
  /** Package download and installer timeouts (defaults: 120 s download, 10 s silence, 600 s install). */
  packageTimeouts?: Pick<PackageSettings, "downloadTimeoutMs" | "connectTimeoutMs" | "installTimeoutMs">;
  /** Largest total size one package may extract to, bytes; default 4 GiB. */
  maxPackageBytes?: number;
  /** Most entries (files, directories, links) in one package; default 100,000. */
  maxPackageEntries?: number;
  /** Default 5000; the control plane's Registered.heartbeat_interval_ms wins when set. */
  heartbeatIntervalMs?: number;
  /** Longest wait between attempts to reach a lost control plane, ms; default 2000. */
  reconnectMaxDelayMs?: number;
  log?: (line: string) => void;
}

export interface Agent {
  readonly nodeName: string;
  /** Unbinds every executor, ends the stream; resolves within ~15 s at worst. */
  close(): Promise<void>;
}

// Unix socket paths longer than this do not fit sun_path on every platform.
const MAX_SOCKET_PATH = 100;
const SOCKET_NAME_LENGTH = "/0123abcd.sock".length;
// At close, OnSessionLeave gets less than at a normal unbind so the whole close stays near 15 s.
const CLOSE_LEAVE_TIMEOUT_MS = 8_000;

function defaultLog(line: string): void {
  process.stderr.write(`${new Date().toISOString()} agent: ${line}\n`);
}

/** `<workDir>/sockets`, or a short dir under the system temp dir when that path would be too long for a socket. */
async function socketDirFor(workDir: string): Promise<{ dir: string; owned: boolean }> {
  const dir = path.join(workDir, "sockets");
  if (dir.length + SOCKET_NAME_LENGTH <= MAX_SOCKET_PATH) {
    await fs.mkdir(dir, { recursive: true });
    return { dir, owned: false };
  }
  return { dir: await fs.mkdtemp(path.join(os.tmpdir(), "kiln-")), owned: true };
}

/**
 * The node agent: keeps one stream to the control plane, and runs the
 * executors it binds here. Resolves once the control plane registered the
 * node (it keeps retrying until then); rejects if it refuses the token, or
 * the node name because another live agent holds it.
 *
 * @example
 * const agent = await startAgent({ endpoint: "http://127.0.0.1:7420", executors: 4 });
 * process.once("SIGTERM", () => void agent.close());
 */
export async function startAgent(options: AgentOptions): Promise<Agent> {
  const node = describeNode(options);
  const socketTimeoutMs = options.socketTimeoutMs ?? 30_000;
  if (!(socketTimeoutMs > 0)) throw new InvalidArgumentError("socketTimeoutMs", "must be a positive number");
  checkWhole("reconnectMaxDelayMs", "--reconnect-max-delay", options.reconnectMaxDelayMs);
  checkWhole("maxPackageBytes", "--max-package-bytes", options.maxPackageBytes);
  checkWhole("maxPackageEntries", "--max-package-entries", options.maxPackageEntries);
  const workDir = path.resolve(options.workDir ?? path.join(os.tmpdir(), `kiln-agent-${process.pid}`));
  const executorsDir = path.join(workDir, "executors");
  const logDir = path.join(workDir, "logs");
  await fs.mkdir(executorsDir, { recursive: true });
  await fs.mkdir(logDir, { recursive: true });
  const sockets = await socketDirFor(workDir);
  const tls = readTlsFiles(options.tls ?? {});
  const agent = new NodeAgent(
    options,
    node,
    {
      controlPlaneEndpoint: options.endpoint,
      ...(options.tls?.ca ? { tlsCaFile: path.resolve(options.tls.ca.path) } : {}),
      socketDir: sockets.dir,
      executorsDir,
      logDir,
      socketTimeoutMs,
      packages: {
        workDir,
        cacheEndpoint: options.cacheEndpoint,
        cacheToken: options.cacheToken,
        cacheTls: tls,
        ...options.packageTimeouts,
        limits: { maxBytes: options.maxPackageBytes, maxEntries: options.maxPackageEntries },
      },
    },
    sockets.owned,
    tls,
  );
  try {
    await agent.start();
  } catch (err) {
    await agent.close();
    throw err;
  }
  return agent;
}

/** A setting that must be a whole number of at least 1 when given; the error names its field and flag. */
function checkWhole(field: string, flag: string, value: number | undefined): void {
  if (value !== undefined && !(Number.isSafeInteger(value) && value >= 1))
    throw new InvalidArgumentError(field, `${value} (${flag}) must be a whole number, at least 1`);
}

type Dirs = Pick<
  ExecutorSetting,
  "controlPlaneEndpoint" | "tlsCaFile" | "socketDir" | "executorsDir" | "logDir" | "socketTimeoutMs" | "packages"
>;

class NodeAgent implements Agent {
  nodeName: string;
  /** Tells the control plane this process's reconnects from another agent that has the same node name. */
  private readonly instanceId = randomUUID();
  private readonly executors = new Map<string, Executor>();
  private readonly outbox = new Outbox();
  private readonly stream: ControlStream;
  private readonly setting: ExecutorSetting;
  private readonly log: (line: string) => void;
  private closing: Promise<void> | undefined;

  constructor(
    options: AgentOptions,
    node: kiln.NodeDescription,
    private readonly dirs: Dirs,
    private readonly ownsSocketDir: boolean,
    tls: TlsClientOptions,
  ) {
    this.nodeName = node.name;
    this.log = options.log ?? defaultLog;
    this.setting = {
      ...dirs,
      log: this.log,
      completion: (c) => this.outbox.completion(c),
      report: (r) => this.outbox.report(r),
      finished: (e) => {
        if (this.executors.get(e.id) === e) this.executors.delete(e.id);
      },
    };
    this.stream = new ControlStream({
      endpoint: options.endpoint,
      token: options.token,
      tls,
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 5_000,
      reconnectMaxDelayMs: options.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_MAX_DELAY_MS,
      outbox: this.outbox,
      register: () =>
        create(kiln.RegisterSchema, {
          node,
          executors: this.liveExecutors(),
          instanceId: this.instanceId,
          pid: process.pid,
        }),
      onRegistered: (r) => this.registered(r),
      onMessage: (m) => this.handle(m),
      log: this.log,
    });
  }

  async start(): Promise<void> {
    this.stream.start();
    await this.stream.firstRegistered;
  }

  close(): Promise<void> {
    return (this.closing ??= (async () => {
      await Promise.all(
        [...this.executors.values()].map((e) => e.unbind("the agent is shutting down", CLOSE_LEAVE_TIMEOUT_MS)),
      );
      await this.stream.close();
      if (this.ownsSocketDir) await fs.rm(this.dirs.socketDir, { recursive: true, force: true });
    })());
  }

  private liveExecutors(): kiln.LiveExecutor[] {
    return [...this.executors.values()]
      .filter((e) => e.live)
      .map((e) =>
        create(kiln.LiveExecutorSchema, {
          executorId: e.id,
          sessionId: e.sessionId,
          tasks: [...e.heldTasks(), ...this.outbox.waitingTasks(e.id)],
        }),
      );
  }

  private registered(r: kiln.Registered): void {
    if (r.nodeName) this.nodeName = r.nodeName;
    this.log(`registered as node ${this.nodeName}`);
    for (const id of r.stopExecutors)
      void this.executors.get(id)?.unbind("the control plane no longer keeps this executor");
    this.outbox.forget(r.forgetTasks);
    if (r.forgetTasks.length > 0) for (const e of this.executors.values()) e.cancel(r.forgetTasks);
  }

  private handle(message: kiln.ControlMessage): void {
    const m = message.kind;
    switch (m.case) {
      case "tasks": {
        let e: Executor | undefined;
        for (const t of m.value.tasks) {
          if (e?.id !== t.executorId) e = this.executors.get(t.executorId);
          e?.enqueue(t);
        }
        break;
      }
      case "bind":
        this.bind(m.value);
        break;
      case "unbind":
        void this.executors.get(m.value.executorId)?.unbind();
        break;
      case "cancel":
        for (const e of this.executors.values()) e.cancel(m.value.tasks);
        break;
      default:
        break;
    }
  }

  private bind(b: kiln.Bind): void {
    if (this.closing) return;
    if (this.executors.has(b.executorId)) {
      this.log(`ignoring a second bind of executor ${b.executorId}`);
      return;
    }
    const e = new Executor(b, this.setting);
    this.executors.set(e.id, e);
    this.log(`binding executor ${e.id} to session ${b.sessionId} (${b.applicationName})`);
    e.bind();
  }
}
