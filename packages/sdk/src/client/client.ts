import { createClient } from "@connectrpc/connect";
import { KilnError, ErrorCode, InvalidArgumentError, NotFoundError, validateName } from "@kiln/protocol";
import { flame, kiln } from "@kiln/protocol/proto";
import { createClusterTransport, type TlsClientOptions } from "@kiln/protocol/transport";
import { loadConfig, type ConnectOptions } from "./config.js";
import { readTlsFiles } from "./tls-config.js";
import { bindContext, ClientContext } from "./context.js";
import { Session } from "./session.js";
import {
  generateSessionId,
  toApplicationSpec,
  toSessionSpec,
  type ApplicationInit,
  type SessionOptions,
} from "./specs.js";

const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
const DEFAULT_PATIENCE_MS = 60_000;

/**
 * Connects to a Kiln (or Flame) cluster. Nothing is sent until the first
 * call. Resolution: options, then env (KILN_ENDPOINT / FLAME_ENDPOINT,
 * KILN_TOKEN), then the config file, then http://127.0.0.1:7420.
 *
 * @example
 * const client = await connect();
 * try { console.log(await client.listApplications()); } finally { client.close(); }
 */
export async function connect(options: ConnectOptions = {}): Promise<KilnClient> {
  const config = loadConfig(options);
  return new KilnClient({
    endpoint: config.endpoint,
    ...(config.token ? { token: config.token } : {}),
    tls: readTlsFiles(config.tls),
    ...(options.requestTimeoutMs !== undefined ? { requestTimeoutMs: options.requestTimeoutMs } : {}),
    ...(options.patienceMs !== undefined ? { patienceMs: options.patienceMs } : {}),
  });
}

/**
 * A client of one cluster: applications, sessions, executors, nodes. Every
 * failure is a KilnError with a stable `code`. Call close() when done so the
 * process can exit.
 *
 * @example
 * const client = await connect({ endpoint: "http://127.0.0.1:7420" });
 * await client.registerApplication("echo", { command: "/usr/bin/my-service" });
 * const session = await client.createSession({ application: "echo" });
 */
export class KilnClient {
  readonly endpoint: string;
  private readonly ctx: ClientContext;
  private readonly closeTransport: () => void;

  /** Prefer connect(), which also reads env and the config file. */
  constructor(options: {
    endpoint: string;
    token?: string;
    tls?: TlsClientOptions;
    requestTimeoutMs?: number;
    patienceMs?: number;
  }) {
    this.endpoint = options.endpoint;
    const patienceMs = options.patienceMs ?? DEFAULT_PATIENCE_MS;
    if (!(patienceMs >= 0 && Number.isFinite(patienceMs)))
      throw new InvalidArgumentError("patienceMs", `must be a number of milliseconds, 0 or more (got ${patienceMs})`);
    const { transport, close } = createClusterTransport(options);
    this.closeTransport = close;
    this.ctx = new ClientContext(
      createClient(flame.Frontend, transport),
      createClient(kiln.Frontend, transport),
      { timeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS },
      options.endpoint,
      patienceMs,
    );
    bindContext(this, this.ctx);
  }

  /**
   * Registers an application; `spec` is the friendly ApplicationInit or a flame.ApplicationSpec.
   *
   * @example
   * await client.registerApplication("pi", { command: "node", arguments: ["pi-service.js"], maxInstances: 8 });
   */
  async registerApplication(name: string, spec: ApplicationInit | flame.ApplicationSpec): Promise<void> {
    const application = toApplicationSpec(spec);
    checkResult(await this.ctx.call((o) => this.ctx.flame.registerApplication({ name, application }, o)));
  }

  /**
   * Replaces an application's spec.
   *
   * @example
   * await client.updateApplication("pi", { command: "node", arguments: ["pi-service-v2.js"] });
   */
  async updateApplication(name: string, spec: ApplicationInit | flame.ApplicationSpec): Promise<void> {
    const application = toApplicationSpec(spec);
    checkResult(await this.ctx.call((o) => this.ctx.flame.updateApplication({ name, application }, o)));
  }

  /**
   * Removes an application (refused while it has open sessions).
   *
   * @example
   * await client.unregisterApplication("pi");
   */
  async unregisterApplication(name: string): Promise<void> {
    checkResult(await this.ctx.call((o) => this.ctx.flame.unregisterApplication({ name }, o)));
  }

  /**
   * One application; NotFound code if it does not exist.
   *
   * @example
   * const app = await client.getApplication("pi"); console.log(app.spec?.command);
   */
  getApplication(name: string): Promise<flame.Application> {
    return this.ctx.call((o) => this.ctx.flame.getApplication({ name }, o));
  }

  /**
   * Every registered application.
   *
   * @example
   * for (const app of await client.listApplications()) console.log(app.metadata?.name);
   */
  async listApplications(): Promise<flame.Application[]> {
    return (await this.ctx.call((o) => this.ctx.flame.listApplication({}, o))).applications;
  }

  /**
   * Creates a session. Its id is `options.id`, else `<application>-<6 random letters/digits>`.
   *
   * @example
   * const session = await client.createSession({ application: "pi", resreq: "cpu=1,mem=512m", maxInstances: 4 });
   */
  async createSession(options: SessionOptions): Promise<Session> {
    const session = toSessionSpec(options);
    const sessionId = validateName("id", options.id ?? generateSessionId(options.application));
    await this.ctx.call((o) => this.ctx.flame.createSession({ sessionId, session }, o));
    return new Session(this, sessionId);
  }

  /**
   * Opens an existing open session; with `options`, creates it if absent (an
   * existing one must then have the same application, resources, instances
   * and priority).
   *
   * @example
   * const session = await client.openSession("pi-shared", { application: "pi" });
   */
  async openSession(id: string, options?: SessionOptions): Promise<Session> {
    validateName("id", id);
    const session = options ? toSessionSpec(options) : undefined;
    await this.ctx.call((o) => this.ctx.flame.openSession({ sessionId: id, ...(session ? { session } : {}) }, o));
    return new Session(this, id);
  }

  /**
   * A session's spec and status.
   *
   * @example
   * const { status } = await client.getSession("pi-Ab12Cd"); console.log(status?.succeed);
   */
  getSession(id: string): Promise<flame.Session> {
    return this.ctx.call((o) => this.ctx.flame.getSession({ sessionId: id }, o));
  }

  /**
   * A handle to an existing session, without any request.
   *
   * @example
   * const out = await client.session("pi-Ab12Cd").run("input");
   */
  session(id: string): Session {
    this.ctx.ensureOpen();
    return new Session(this, id);
  }

  /**
   * Every session, open and closed.
   *
   * @example
   * const open = (await client.listSessions()).filter((s) => s.status?.state === flame.SessionState.Open);
   */
  async listSessions(): Promise<flame.Session[]> {
    return (await this.ctx.call((o) => this.ctx.flame.listSession({}, o))).sessions;
  }

  /**
   * One page of sessions in id order (kiln.v1 ListSessions), optionally of one application or in one
   * state: at most `limit` (default 1,000, at most 10,000). `next` is the `afterSessionId` of the next
   * page, undefined after the last.
   *
   * @example
   * const { sessions, next } = await client.listSessionsPage({ state: flame.SessionState.Open, limit: 100 });
   */
  async listSessionsPage(
    options: { afterSessionId?: string; limit?: number; application?: string; state?: flame.SessionState } = {},
  ): Promise<{ sessions: flame.Session[]; next: string | undefined }> {
    const r = await this.ctx.call((o) =>
      this.ctx.kiln.listSessions(
        {
          afterSessionId: options.afterSessionId ?? "",
          limit: options.limit ?? 0,
          application: options.application ?? "",
          ...(options.state !== undefined ? { state: options.state } : {}),
        },
        o,
      ),
    );
    return { sessions: r.sessions, next: r.nextAfterSessionId === "" ? undefined : r.nextAfterSessionId };
  }

  /**
   * Session changes as they are committed (kiln.v1 WatchSessions): first
   * every session that exists (or those in `sessionIds`, each of which must
   * exist), then, one batch per commit, the sessions that changed (task
   * counts, state, events) and the ids of deleted ones. With `events`, each
   * session's `status.events` holds only the events new since the last batch
   * that carried it. Ends quietly when `signal` aborts.
   *
   * @example
   * for await (const { sessions } of client.watchSessions({ signal })) for (const s of sessions) show(s);
   */
  async *watchSessions(
    options: { sessionIds?: string[]; events?: boolean; omitTaskChanges?: boolean; signal?: AbortSignal } = {},
  ): AsyncIterable<SessionsChange> {
    const ctx = this.ctx;
    ctx.ensureOpen();
    const request = {
      sessionIds: options.sessionIds ?? [],
      events: options.events ?? false,
      omitTaskChanges: options.omitTaskChanges ?? false,
    };
    try {
      for await (const msg of ctx.kiln.watchSessions(request, options.signal ? { signal: options.signal } : {}))
        yield { sessions: msg.sessions, deleted: msg.deletedSessionIds };
    } catch (e) {
      if (options.signal?.aborted && !ctx.closed) return;
      throw ctx.toError(e);
    }
  }

  /**
   * Closes a session; its pending tasks are cancelled.
   *
   * @example
   * await client.closeSession("pi-Ab12Cd");
   */
  closeSession(id: string): Promise<flame.Session> {
    return this.ctx.call((o) => this.ctx.flame.closeSession({ sessionId: id }, o));
  }

  /**
   * Deletes a session and its tasks (refused while tasks are still running or pending).
   *
   * @example
   * await client.deleteSession("pi-Ab12Cd");
   */
  deleteSession(id: string): Promise<flame.Session> {
    return this.ctx.call((o) => this.ctx.flame.deleteSession({ sessionId: id }, o));
  }

  /**
   * Every executor on every node.
   *
   * @example
   * const bound = (await client.listExecutors()).filter((e) => e.status?.sessionId);
   */
  async listExecutors(): Promise<flame.Executor[]> {
    return (await this.ctx.call((o) => this.ctx.flame.listExecutor({}, o))).executors;
  }

  /**
   * Every node that has registered.
   *
   * @example
   * for (const n of await client.listNodes()) console.log(n.metadata?.name, flame.NodeState[n.status?.state ?? 0]);
   */
  async listNodes(): Promise<flame.Node[]> {
    return (await this.ctx.call((o) => this.ctx.flame.listNodes({}, o))).nodes;
  }

  /**
   * One node; NotFound code if unknown.
   *
   * @example
   * const node = await client.getNode("worker-1"); console.log(node.status?.capacity);
   */
  async getNode(name: string): Promise<flame.Node> {
    const { node } = await this.ctx.call((o) => this.ctx.flame.getNode({ name }, o));
    if (!node) throw new NotFoundError("node", name);
    return node;
  }

  /**
   * What the control plane says about its cluster: its version, the object
   * cache its clients use (empty when it was not told of one) and how many
   * nodes, executors and open sessions it has. A Flame cluster has no such
   * call (UNIMPLEMENTED, code INTERNAL).
   *
   * @example
   * const { version, cacheEndpoint, readyNodes } = await client.clusterInfo();
   */
  clusterInfo(): Promise<kiln.ClusterInfo> {
    return this.ctx.call((o) => this.ctx.kiln.getClusterInfo({}, o));
  }

  /**
   * Rejects pending run() calls, ends streams and closes the connection. Idempotent.
   *
   * @example
   * process.on("SIGINT", () => client.close());
   */
  close(): void {
    this.ctx.close();
    this.closeTransport();
  }
}

/** One batch of `watchSessions`: deletions apply before the sessions listed. */
export interface SessionsChange {
  sessions: flame.Session[];
  deleted: string[];
}

/** Flame reports some failures in a Result instead of a status. */
function checkResult(result: flame.Result): void {
  if (result.returnCode !== 0)
    throw new KilnError(ErrorCode.Internal, result.message ?? `request failed with return code ${result.returnCode}`);
}
