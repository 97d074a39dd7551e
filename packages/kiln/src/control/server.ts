import { toJson } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { StreamRoutes, translateErrors } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import * as path from "node:path";
import { bearerTokenCheck, checkExposure } from "../net/auth.js";
import { healthzResponder, KilnServer } from "../net/healthz.js";
import { listenHttp1, listenHttp2, type Listener } from "../net/http-server.js";
import { requireToken, tokenRefusal } from "../net/interceptors.js";
import { portInUse } from "../net/port-in-use.js";
import { agentService } from "./api/agent-service.js";
import { frontendService, type FrontendDeps } from "./api/frontend-service.js";
import { kilnFrontendService } from "./api/kiln-frontend-service.js";
import { toTaskMessage } from "./api/messages.js";
import { ApplicationRegistry } from "./applications.js";
import { registerBuiltinApps } from "./builtin-apps.js";
import { clusterInfo } from "./cluster-info.js";
import { resolveConfig, type ControlPlaneOptions } from "./config.js";
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
  checkExposure(config.host, config.token, config.tls?.clientCa);

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
  const orchestrator = new Orchestrator(config, sessions, apps);
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
  const flameFrontend = frontendService(deps);
  const kilnFrontend = kilnFrontendService(deps);
  const agent = agentService(orchestrator, config.log);
  // Batches of tasks can be large; each task's input is checked against maxTaskBytes with a clear error.
  const readMaxBytes = Math.max(256 * 1024 * 1024, config.maxTaskBytes * 4);
  const connectHandler = connectNodeAdapter({
    routes: (router) => {
      router.service(flame.Frontend, flameFrontend);
      router.service(kiln.Frontend, kilnFrontend);
      router.service(kiln.Agent, agent);
    },
    interceptors: [...(config.token ? [requireToken(config.token)] : []), translateErrors()],
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
  const tokenMatches = config.token ? bearerTokenCheck(config.token) : undefined;
  const streams = new StreamRoutes({
    readMaxBytes,
    ...(tokenMatches ? { authorize: (h) => (tokenMatches(h.authorization) ? undefined : tokenRefusal()) } : {}),
  })
    .add(flame.Frontend, flameFrontend)
    .add(kiln.Frontend, kilnFrontend)
    .add(kiln.Agent, agent);
  const closeStore = () => {
    commit.flushNow();
    store.close();
  };
  const secure = config.tls ? { tls: config.tls, log: config.log } : undefined;
  let server: Listener;
  let http1: Listener;
  try {
    server = await listenHttp2(config.host, config.port, streams.handler(handler), secure).catch(
      portInUse(config.port, "grpc"),
    );
    const httpPort = config.httpPort ?? (config.port === 0 ? 0 : server.port + 1);
    http1 = await listenHttp1(config.host, httpPort, handler, secure).catch(async (err: unknown) => {
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
  const scheme = config.tls ? "https" : "http";
  const endpoint = (endpoints.endpoint = `${scheme}://${shownHost}:${server.port}`);
  const httpEndpoint = (endpoints.httpEndpoint = `${scheme}://${shownHost}:${http1.port}`);
  config.log(
    `control plane listening on ${endpoint} (gRPC/HTTP2) and ${httpEndpoint} (JSON/HTTP1.1)` +
      `${config.tls?.clientCa !== undefined ? ", client certificates required" : ""}; data in ${config.dataDir}`,
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
