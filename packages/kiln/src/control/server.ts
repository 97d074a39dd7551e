import { toJson } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { InvalidArgumentError } from "@kiln/protocol";
import { StreamRoutes, translateErrors } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import * as path from "node:path";
import { isLoopbackHost } from "../net/auth.js";
import { Credentials } from "../net/credentials.js";
import { healthzResponder, KilnServer } from "../net/healthz.js";
import { listenHttp1, listenHttp2, type Listener } from "../net/http-server.js";
import { admitCalls } from "../net/interceptors.js";
import { portInUse } from "../net/port-in-use.js";
import { agentService } from "./api/agent-service.js";
import { CallGuard } from "./api/call-scope.js";
import { frontendService, type FrontendDeps } from "./api/frontend-service.js";
import { kilnFrontendService } from "./api/kiln-frontend-service.js";
import { toTaskMessage } from "./api/messages.js";
import { ApplicationRegistry } from "./applications.js";
import { registerBuiltinApps } from "./builtin-apps.js";
import { clusterInfo } from "./cluster-info.js";
import { resolveConfig, type ControlPlaneOptions } from "./config.js";
import { revokeAtCache } from "./credential-revocation.js";
import { Orchestrator } from "./orchestrator.js";
import { SessionRegistry } from "./sessions.js";
import { SessionsFeed } from "./sessions-feed.js";
import { GroupCommit } from "./store/group-commit.js";
import { SqliteStore } from "./store/sqlite-store.js";
import { WatchHub } from "./watch-hub.js";

export type { ControlPlaneOptions } from "./config.js";

export interface ControlPlane {
  /** `http://host:port`, for clients and agents (gRPC and Connect over HTTP/2). */
  endpoint: string;
  port: number;
  /** The same API as Connect JSON over HTTP/1.1 (curl, fetch). */
  httpEndpoint: string;
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
  if (!isLoopbackHost(config.host) && !config.token)
    throw new InvalidArgumentError(
      "host",
      `listening on ${config.host} (beyond loopback) requires a token (--token or KILN_TOKEN)`,
    );

  const credentials = new Credentials({ adminToken: config.token, nodeToken: config.nodeToken });

  const store = SqliteStore.open(path.join(config.dataDir, "kiln.db"), config.durability);
  const commit = new GroupCommit(store);
  // The callback runs only after both registries exist.
  const apps: ApplicationRegistry = new ApplicationRegistry(commit, (name): boolean => sessions.hasOpenSessions(name));
  const sessions: SessionRegistry = new SessionRegistry(commit, apps, {
    retries: config.retries,
    maxTaskBytes: config.maxTaskBytes,
    defaultResreq: config.defaultResreq,
  });
  const snapshot = store.load();
  apps.load(snapshot.applications);
  sessions.load(snapshot);
  registerBuiltinApps(apps);
  commit.flushNow();

  const hub = new WatchHub(toTaskMessage);
  const feed = new SessionsFeed();
  const orchestrator = new Orchestrator(config, sessions, apps, credentials);
  sessions.observer = {
    taskChanged: (s, t) => {
      hub.taskChanged(s, t);
      feed.taskChanged(s);
      // Watchers hear of changes after a commit; a dispatch (Running) writes nothing, so ask for one.
      commit.flushSoon();
    },
    sessionChanged: (s) => feed.sessionChanged(s),
    sessionEnded: (s) => {
      hub.sessionEnded(s);
      feed.sessionChanged(s);
      orchestrator.sessionEnded(s);
      if (credentials.required && config.cacheEndpoint)
        void revokeAtCache(config.cacheEndpoint, config.token!, s, config.log);
    },
    sessionDeleted: (s) => feed.sessionDeleted(s),
    workAdded: (s) => orchestrator.workAdded(s),
  };
  commit.onCommit(() => orchestrator.dispatchDirty());
  commit.onCommit(() => hub.flush());
  commit.onCommit(() => feed.flush());
  orchestrator.start();

  const info = () => clusterInfo(orchestrator.cluster, sessions, config.cacheEndpoint);
  const deps: FrontendDeps = { apps, sessions, orchestrator, hub, feed, commit, clusterInfo: info };
  const guard = new CallGuard(credentials, sessions);
  const flameFrontend = guard.scoped(flame.Frontend, frontendService(deps));
  const kilnFrontend = guard.scoped(kiln.Frontend, kilnFrontendService(deps));
  const admit = (authorization: string | undefined, path: string) => guard.admit(authorization, path);
  const agent = agentService(orchestrator, config.log);
  // Batches of tasks can be large; each task's input is checked against maxTaskBytes with a clear error.
  const readMaxBytes = Math.max(256 * 1024 * 1024, config.maxTaskBytes * 4);
  const connectHandler = connectNodeAdapter({
    routes: (router) => {
      router.service(flame.Frontend, flameFrontend);
      router.service(kiln.Frontend, kilnFrontend);
      router.service(kiln.Agent, agent);
    },
    interceptors: [admitCalls(admit), translateErrors()],
    readMaxBytes,
  });
  // Known once both ports listen; /healthz names them so a client at the wrong one can be told the right one.
  const endpoints = { endpoint: "", httpEndpoint: "" };
  const healthz = healthzResponder(KilnServer.ControlPlane, config.token, () => ({
    ...endpoints,
    ...(toJson(kiln.ClusterInfoSchema, info(), { alwaysEmitImplicit: true }) as Record<string, unknown>),
  }));
  const handler: typeof connectHandler = (req, res) => {
    if (!healthz(req, res)) connectHandler(req, res);
  };
  // gRPC streams (agents, task submission, watches) skip Connect's per-message pipeline; see StreamRoutes.
  const streams = new StreamRoutes({ readMaxBytes, authorize: (h, path) => admit(h.authorization, path) })
    .add(flame.Frontend, flameFrontend)
    .add(kiln.Frontend, kilnFrontend)
    .add(kiln.Agent, agent);
  const closeStore = () => {
    commit.flushNow();
    store.close();
  };
  let server: Listener;
  let http1: Listener;
  try {
    server = await listenHttp2(config.host, config.port, streams.handler(handler)).catch(
      portInUse(config.port, "grpc"),
    );
    const httpPort = config.httpPort ?? (config.port === 0 ? 0 : server.port + 1);
    http1 = await listenHttp1(config.host, httpPort, handler).catch(async (err: unknown) => {
      await server.close();
      return portInUse(httpPort, "json")(err);
    });
  } catch (err) {
    orchestrator.stop();
    closeStore();
    throw err;
  }
  const shownHost = config.host.includes(":")
    ? `[${config.host}]`
    : config.host === "0.0.0.0"
      ? "127.0.0.1"
      : config.host;
  const endpoint = (endpoints.endpoint = `http://${shownHost}:${server.port}`);
  const httpEndpoint = (endpoints.httpEndpoint = `http://${shownHost}:${http1.port}`);
  config.log(
    `control plane listening on ${endpoint} (gRPC/HTTP2) and ${httpEndpoint} (JSON/HTTP1.1); data in ${config.dataDir}`,
  );

  return {
    endpoint,
    port: server.port,
    httpEndpoint,
    async close() {
      orchestrator.stop();
      await Promise.all([server.close(), http1.close()]);
      closeStore();
    },
  };
}
