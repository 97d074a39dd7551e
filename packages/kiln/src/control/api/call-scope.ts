import type { DescMethod, DescService } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { PermissionDeniedError, UnauthenticatedError, type KilnError } from "@kiln/protocol";
import { flame, kiln } from "@kiln/protocol/proto";
import type { Peer } from "../../net/auth.js";
import type { Credentials, TaskPrincipal } from "../../net/credentials.js";
import type { SessionRegistry } from "../sessions.js";

/** What one request touches: the sessions and applications a task credential must own. */
interface Scope {
  sessions?: readonly string[];
  applications?: readonly string[];
  /** Every session of the cluster (a sessions feed without ids): never a task's. */
  allSessions?: boolean;
}

// Loosely typed so one table covers both services; each entry reads its own method's request.
/* eslint-disable @typescript-eslint/no-explicit-any */
type ScopeOf = (req: any) => Scope;
const bySession: ScopeOf = (r: { sessionId: string }) => ({ sessions: [r.sessionId] });

/**
 * The methods a task credential may call, each with what it touches. A
 * method not listed here (application management, nodes, executors, the
 * session list, the agent protocol) is refused to task credentials outright.
 */
const TASK_METHODS: Record<string, ScopeOf> = {
  [`${flame.Frontend.typeName}/GetApplication`]: (r: flame.GetApplicationRequest) => ({ applications: [r.name] }),
  [`${flame.Frontend.typeName}/CreateSession`]: (r: flame.CreateSessionRequest) => ({
    applications: [r.session?.application ?? ""],
  }),
  [`${flame.Frontend.typeName}/OpenSession`]: (r: flame.OpenSessionRequest) => ({
    sessions: [r.sessionId],
    applications: r.session ? [r.session.application] : [],
  }),
  [`${flame.Frontend.typeName}/CloseSession`]: bySession,
  [`${flame.Frontend.typeName}/DeleteSession`]: bySession,
  [`${flame.Frontend.typeName}/GetSession`]: bySession,
  [`${flame.Frontend.typeName}/CreateTask`]: (r: flame.CreateTaskRequest) => ({ sessions: [r.task?.sessionId ?? ""] }),
  [`${flame.Frontend.typeName}/GetTask`]: bySession,
  [`${flame.Frontend.typeName}/WatchTask`]: bySession,
  [`${flame.Frontend.typeName}/ListTask`]: bySession,
  [`${kiln.Frontend.typeName}/CreateTasks`]: bySession,
  [`${kiln.Frontend.typeName}/SubmitTasks`]: bySession,
  [`${kiln.Frontend.typeName}/WatchSession`]: bySession,
  [`${kiln.Frontend.typeName}/CancelTasks`]: bySession,
  [`${kiln.Frontend.typeName}/WatchSessions`]: (r: kiln.WatchSessionsRequest) =>
    r.sessionIds.length > 0 ? { sessions: r.sessionIds } : { allSessions: true },
  // Clients learn the object cache's endpoint from it.
  [`${kiln.Frontend.typeName}/GetClusterInfo`]: () => ({}),
  [`${kiln.Frontend.typeName}/ListTasks`]: bySession,
  [`${kiln.Frontend.typeName}/ListSessions`]: (r: kiln.ListSessionsRequest) =>
    r.application !== "" ? { applications: [r.application] } : { allSessions: true },
};
/* eslint-enable @typescript-eslint/no-explicit-any */

const NODE_INFO_METHOD = `${kiln.Frontend.typeName}/GetClusterInfo`;

const TASK_SCOPE = "a task credential may only use its own application's sessions, tasks and objects";

/**
 * Who may call what on the control plane. {@link CallGuard.admit} decides
 * from the headers and the method alone, before any body is read (unknown
 * credential: UNAUTHENTICATED; a role that may not call the method:
 * PERMISSION_DENIED); {@link CallGuard.scoped} wraps a service so each
 * request a task credential sends is checked against its application.
 */
export class CallGuard {
  constructor(
    private readonly credentials: Credentials,
    private readonly sessions: SessionRegistry,
    /** Mutual TLS for nodes: the agent protocol needs a verified client certificate as well as its token. */
    private readonly nodesNeedCertificates = false,
  ) {}

  /** The error that refuses `service/method` to this caller, or undefined to let the call run. */
  admit(authorization: string | undefined, path: string, peer: Peer = { certified: false }): KilnError | undefined {
    const auth = this.authenticate(authorization);
    if ("refusal" in auth) return new UnauthenticatedError(auth.refusal);
    const { principal } = auth;
    const method = path.startsWith("/") ? path.slice(1) : path;
    const isAgent = method.startsWith(`${kiln.Agent.typeName}/`);
    if (isAgent && this.nodesNeedCertificates && !peer.certified)
      return new UnauthenticatedError(
        "this control plane requires a client certificate signed by its --tls-client-ca for the agent protocol " +
          "(give the agent --tls-client-cert and --tls-client-key)",
      );
    if (principal.role === "admin") return undefined;
    // An agent also asks where the object cache is (GetClusterInfo), to fetch cache:// packages from it.
    if (principal.role === "node")
      return isAgent || method === NODE_INFO_METHOD
        ? undefined
        : new PermissionDeniedError(method, "the node token may only speak kiln.v1.Agent (and read the cluster info)");
    if (isAgent) return new PermissionDeniedError(method, "a task credential may not speak the agent protocol");
    if (!(method in TASK_METHODS)) return new PermissionDeniedError(method, TASK_SCOPE);
    return undefined;
  }

  /**
   * `impl` with every method checking, for a task credential, that the
   * request stays within its application; a request outside it fails with
   * PERMISSION_DENIED naming what it touched. Admin calls pass untouched.
   */
  scoped<S extends DescService>(service: S, impl: ServiceImpl<S>): ServiceImpl<S> {
    const wrapped: Record<string, unknown> = { ...impl };
    for (const method of service.methods) {
      const scopeOf = TASK_METHODS[`${service.typeName}/${method.name}`];
      const original = (impl as Record<string, unknown>)[method.localName] as
        ((input: unknown, ctx: HandlerContext) => unknown) | undefined;
      if (!scopeOf || !original) continue;
      wrapped[method.localName] = this.wrapMethod(method, scopeOf, original.bind(impl));
    }
    return wrapped as ServiceImpl<S>;
  }

  private wrapMethod(
    method: DescMethod,
    scopeOf: ScopeOf,
    original: (input: unknown, ctx: HandlerContext) => unknown,
  ): (input: unknown, ctx: HandlerContext) => unknown {
    const taskOf = (ctx: HandlerContext) => this.taskOf(ctx);
    const refuseIfClosed = (task: TaskPrincipal) => this.refuseIfClosed(task);
    const check = (task: TaskPrincipal | undefined, req: unknown) => {
      if (task) this.checkScope(task, method, scopeOf(req));
    };
    switch (method.methodKind) {
      case "unary":
        return async (req, ctx) => {
          check(taskOf(ctx), req);
          return original(req, ctx);
        };
      case "server_streaming":
        return async function* (req, ctx) {
          check(taskOf(ctx), req);
          yield* original(req, ctx) as AsyncIterable<unknown>;
        };
      default:
        // A stream of requests: its credential is verified once, and each request is checked as it
        // arrives (the session may close meanwhile, which ends a task credential).
        return (requests, ctx) => {
          const task = taskOf(ctx);
          return original(
            (async function* () {
              for await (const req of requests as AsyncIterable<unknown>) {
                if (task) refuseIfClosed(task);
                check(task, req);
                yield req;
              }
            })(),
            ctx,
          );
        };
    }
  }

  private authenticate(authorization: string | undefined) {
    const auth = this.credentials.authenticate(authorization);
    if ("principal" in auth && auth.principal.role === "task") {
      const refusal = this.closedRefusal(auth.principal);
      if (refusal) return { refusal };
    }
    return auth;
  }

  /** The control plane knows at once when a session closes: its credential ends there, not at its expiry. */
  private closedRefusal(task: TaskPrincipal): string | undefined {
    const s = this.sessions.get(task.sessionId);
    return s?.state === flame.SessionState.Open
      ? undefined
      : `the task credential of session "${task.sessionId}" ended when the session closed`;
  }

  private refuseIfClosed(task: TaskPrincipal): void {
    const refusal = this.closedRefusal(task);
    if (refusal) throw new UnauthenticatedError(refusal);
  }

  /** The task credential behind a call `admit` let in; undefined for any other caller. */
  private taskOf(ctx: HandlerContext): TaskPrincipal | undefined {
    const auth = this.authenticate(ctx.requestHeader.get("authorization") ?? undefined);
    if ("refusal" in auth) throw new UnauthenticatedError(auth.refusal);
    return auth.principal.role === "task" ? auth.principal : undefined;
  }

  private checkScope(task: TaskPrincipal, method: DescMethod, scope: Scope): void {
    const what = `${method.parent.typeName}/${method.name}`;
    const own = task.application;
    if (scope.allSessions)
      throw new PermissionDeniedError(
        `${what} of every session`,
        `${TASK_SCOPE}: name its sessions (or its application, to list sessions)`,
      );
    for (const app of scope.applications ?? [])
      if (app !== own) throw new PermissionDeniedError(`${what} for application "${app}"`, outside(own));
    for (const id of scope.sessions ?? []) {
      // An unknown session is left to the method, which answers NOT_FOUND.
      const app = this.sessions.get(id)?.application;
      if (app !== undefined && app !== own)
        throw new PermissionDeniedError(`${what} on session "${id}" of application "${app}"`, outside(own));
    }
  }
}

function outside(own: string): string {
  return `this task credential is scoped to application "${own}"`;
}
