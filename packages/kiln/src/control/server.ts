import { toJson, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import type { KilnError } from "@kiln/protocol";
import { StreamRoutes, translateErrors } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import { checkExposure, type Admit } from "../net/auth.js";
import { connectHandler } from "../net/connect-handler.js";
import { Credentials } from "../net/credentials.js";
import { healthzResponder, KilnServer } from "../net/healthz.js";
import { listenHttp1, listenHttp2, type Listener } from "../net/http-server.js";
import { portInUse } from "../net/port-in-use.js";
import { requestGate } from "../net/request-gate.js";
import { agentService } from "./api/agent-service.js";
import { CallGuard } from "./api/call-scope.js";
import { frontendService, type FrontendDeps } from "./api/frontend-service.js";
import { kilnFrontendService } from "./api/kiln-frontend-service.js";
import { toTaskMessage } from "./api/messages.js";
import { ApplicationRegistry } from "./applications.js";
import { registerBuiltinApps } from "./builtin-apps.js";
import { clusterInfo } from "./cluster-info.js";
import { resolveConfig, type ControlPlaneOptions } from "./config.js";
import { ObjectCacheNotices } from "./object-cache-notices.js";
import { Orchestrator } from "./orchestrator.js";
import { RequestLimits } from "./request-limits.js";
import { Retention } from "./retention.js";
import { SessionRegistry } from "./sessions.js";
import { SessionsFeed } from "./sessions-feed.js";
import { GroupCommit } from "./store/group-commit.js";
import { openStore } from "./store/open-store.js";
import { WatchHub, type WatchStats } from "./watch-hub.js";

export type { ControlPlaneOptions } from "./config.js";

/** How long a control plane whose store failed keeps its listeners, so the refusals it sent arrive. */
const STOP_GRACE_MS = 500;

export interface ControlPlane {
  /** `http://host:port`, for clients and agents (gRPC and Connect over HTTP/2). */
  endpoint: string;
  port: number;
  /** The same API as Connect JSON over HTTP/1.1 (curl, fetch). */
  httpEndpoint: string;
  /**
   * Settles with the reason if the control plane stops by itself: its store could not be written (a
   * full disk), so what it holds in memory is no longer what it stored. Call close(), then start it
   * again on the same data dir to go on from what was stored.
   */
  failed: Promise<KilnError>;
  /** Session watchers, those behind, and the bytes they hold unsent for slow clients (bounded, see WatchHub). */
  watchStats(): WatchStats;
  close(): Promise<void>;
}

/**
 * Starts the control plane: loads the store, registers built-in apps, and
 * serves flame.v1.Frontend, kiln.v1.Frontend and kiln.v1.Agent: gRPC and
 * Connect over HTTP/2 on `port`, Connect JSON over HTTP/1.1 on `httpPort`.
 *
 * @example
 * const cp = await startControlPlane({ dataDir: "/var/lib/kiln", port: 7420 });
 * console.log(cp.endpoint); // http://127.0.0.1:7420
 * await cp.close();
 */
export async function startControlPlane(options: ControlPlaneOptions): Promise<ControlPlane> {
  const config = resolveConfig(options);
  checkExposure(config.host, config.token, config.tls?.clientCa);

  const credentials = new Credentials({ adminToken: config.token, nodeToken: config.nodeToken });

  const store = await openStore(config.store, config.dataDir, config.durability);
  // A commit that fails while starting fails the start; later, it stops the control plane (see GroupCommit).
  let storeFailed = (refusal: KilnError): void => {
    throw refusal;
  };
  const commit = new GroupCommit(store, (refusal) => storeFailed(refusal));
  // The callback runs only after both registries exist.
  const apps: ApplicationRegistry = new ApplicationRegistry(commit, (name): boolean => sessions.hasOpenSessions(name));
  const sessions: SessionRegistry = new SessionRegistry(commit, store, apps, {
    pendingInMemory: config.pendingTasksInMemory,
    retries: config.retries,
    maxTaskBytes: config.maxTaskBytes,
    defaultResreq: config.defaultResreq,
  });
  // Objects go with what owns them: the cache hears when a session is deleted or an application removed.
  const cacheNotices = config.cacheEndpoint
    ? new ObjectCacheNotices(config.cacheEndpoint, config.token, config.log)
    : undefined;
  apps.onRemoved = (name) => void cacheNotices?.applicationRemoved(name);
  const snapshot = await store.loadWorkingSet(config.pendingTasksInMemory);
  apps.load(snapshot.applications);
  sessions.load(snapshot);
  // Before the built-in apps, whose registration would end a drain of one of them.
  apps.settleAll();
  registerBuiltinApps(apps);
  await commit.settle();

  const hub = new WatchHub(toTaskMessage, {
    maxBytes: config.watchBufferBytes,
    behindLimitMs: config.watchBehindLimitMs,
  });
  const feed = new SessionsFeed();
  const orchestrator = new Orchestrator(config, sessions, apps, commit, credentials);
  const retention = new Retention(sessions, config.retentionMs);
  sessions.observer = {
    taskChanged: (s, t) => {
      hub.taskChanged(s, t);
      feed.taskChanged(s);
      retention.taskChanged(s);
      // Watchers hear of changes after a commit; a dispatch (Running) writes nothing, so ask for one.
      commit.flushSoon();
    },
    sessionChanged: (s) => feed.sessionChanged(s),
    sessionEnded: (s) => {
      hub.sessionEnded(s);
      feed.sessionChanged(s);
      orchestrator.sessionEnded(s);
      retention.sessionEnded(s);
      if (credentials.required) void cacheNotices?.sessionClosed(s);
    },
    sessionDeleted: (s) => {
      feed.sessionDeleted(s);
      retention.sessionDeleted(s);
      void cacheNotices?.sessionDeleted(s);
    },
    workAdded: (s) => orchestrator.workAdded(s),
  };
  commit.onCommit(() => orchestrator.dispatchDirty());
  commit.onCommit(() => hub.flush());
  commit.onCommit(() => feed.flush());
  commit.onCommit(() => orchestrator.acknowledgeCompletions());
  orchestrator.start();
  const failed = new Promise<KilnError>((resolve) => {
    storeFailed = (refusal) => {
      config.log(`control plane stopping: ${refusal.message}`);
      orchestrator.stop();
      retention.stop();
      // The refusals just sent get a moment to reach their callers before the listeners close.
      setTimeout(() => resolve(refusal), STOP_GRACE_MS);
    };
  });
  orchestrator.recover(snapshot.nodes);
  retention.start();

  const info = () => clusterInfo(orchestrator.cluster, sessions, config.cacheEndpoint);
  const deps: FrontendDeps = { apps, sessions, orchestrator, hub, feed, commit, clusterInfo: info };
  // With a token, mutual TLS is for nodes: clients and service processes keep using tokens.
  const tls =
    config.tls?.clientCa !== undefined && config.token
      ? { ...config.tls, clientCertificates: "nodes" as const }
      : config.tls;
  const guard = new CallGuard(credentials, sessions, tls?.clientCertificates === "nodes");
  const flameFrontend = guard.scoped(flame.Frontend, frontendService(deps));
  const kilnFrontend = guard.scoped(kiln.Frontend, kilnFrontendService(deps));
  const admit: Admit = (headers, path, peer) => guard.admit(headers.authorization, path, peer);
  const agent = agentService(orchestrator, config.log);
  const services: [DescService, object][] = [
    [flame.Frontend, flameFrontend],
    [kiln.Frontend, kilnFrontend],
    [kiln.Agent, agent],
  ];
  const limits = new RequestLimits(
    config.maxTaskBytes,
    config.maxRequestBytes,
    services.map(([service]) => service),
  );
  const api = connectHandler({
    routes: (router) => {
      for (const [service, impl] of services) serveWithLimits(router, service, impl, limits);
    },
    interceptors: [translateErrors()],
  });
  // Known once both ports listen; /healthz names them so a client at the wrong one can be told the right one.
  const endpoints = { endpoint: "", httpEndpoint: "" };
  const healthz = healthzResponder(
    KilnServer.ControlPlane,
    (h) => credentials.isAdmin(h.authorization),
    () => ({
      ...endpoints,
      ...(toJson(kiln.ClusterInfoSchema, info(), { alwaysEmitImplicit: true }) as Record<string, unknown>),
    }),
  );
  // gRPC streams (agents, task submission, watches) skip Connect's per-message pipeline; see StreamRoutes.
  const streams = new StreamRoutes({ readMaxBytes: limits.streamMessageBytes })
    .add(flame.Frontend, flameFrontend)
    .add(kiln.Frontend, kilnFrontend)
    .add(kiln.Agent, agent);
  // Credentials and declared lengths are checked before any route reads a byte of the body.
  const gate = { admit, limitOf: limits.ofPath };
  const http2Handler = requestGate(gate, streams.handler(api));
  const http1Handler = requestGate(gate, api);
  const closeStore = async () => {
    // A failed store has nothing more to take; what it refused was never acknowledged.
    await commit.settle().catch(() => undefined);
    await store.close();
  };
  const secure = tls ? { tls, log: config.log } : undefined;
  let server: Listener;
  let http1: Listener;
  try {
    server = await listenHttp2(
      config.host,
      config.port,
      (req, res) => healthz(req, res) || http2Handler(req, res),
      secure,
    ).catch(portInUse(config.port, "grpc"));
    const httpPort = config.httpPort ?? (config.port === 0 ? 0 : server.port + 1);
    http1 = await listenHttp1(
      config.host,
      httpPort,
      (req, res) => healthz(req, res) || http1Handler(req, res),
      secure,
    ).catch(async (err: unknown) => {
      await server.close();
      return portInUse(httpPort, "json")(err);
    });
  } catch (err) {
    orchestrator.stop();
    retention.stop();
    await closeStore();
    throw err;
  }
  const shownHost = config.host.includes(":")
    ? `[${config.host}]`
    : config.host === "0.0.0.0"
      ? "127.0.0.1"
      : config.host;
  const scheme = config.tls ? "https" : "http";
  const endpoint = (endpoints.endpoint = `${scheme}://${shownHost}:${server.port}`);
  const httpEndpoint = (endpoints.httpEndpoint = `${scheme}://${shownHost}:${http1.port}`);
  config.log(
    `control plane listening on ${endpoint} (gRPC/HTTP2) and ${httpEndpoint} (JSON/HTTP1.1)` +
      `${tls?.clientCa === undefined ? "" : tls.clientCertificates === "nodes" ? ", client certificates required of agents" : ", client certificates required"}; data in ${config.store === undefined ? config.dataDir : store.description}`,
  );

  return {
    endpoint,
    port: server.port,
    httpEndpoint,
    failed,
    watchStats: () => hub.stats(),
    async close() {
      orchestrator.stop();
      retention.stop();
      await Promise.all([server.close(), http1.close()]);
      await closeStore();
    },
  };
}

/**
 * Registers each method of `service` with the body limit of its route: Connect reads no more than
 * that of a body (counting one without a declared length as it arrives, compressed or not).
 */
function serveWithLimits(router: ConnectRouter, service: DescService, impl: object, limits: RequestLimits): void {
  for (const method of service.methods) {
    const fn: unknown = (impl as Record<string, unknown>)[method.localName];
    const unimplemented = () => {
      throw new ConnectError(`${service.typeName}.${method.name} is not implemented`, Code.Unimplemented);
    };
    // The method's type is only known at run time here; the implementation is the service's own.
    const bound = (typeof fn === "function" ? fn.bind(impl) : unimplemented) as never;
    router.rpc(method, bound, {
      readMaxBytes: limits.of(method).bytes,
    });
  }
}
