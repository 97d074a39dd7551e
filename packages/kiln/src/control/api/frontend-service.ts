import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { NotFoundError, untilAborted } from "@kiln/protocol";
import { flame, type kiln } from "@kiln/protocol/proto";
import { toApplicationMessage, type ApplicationRegistry } from "../applications.js";
import { toExecutorMessage, toNodeMessage } from "../cluster-state.js";
import type { Orchestrator } from "../orchestrator.js";
import type { SessionRegistry } from "../sessions.js";
import type { SessionsFeed } from "../sessions-feed.js";
import type { GroupCommit } from "../store/group-commit.js";
import type { StoredTask } from "../store/store.js";
import type { WatchHub } from "../watch-hub.js";
import { toSessionMessage, toTaskMessage } from "./messages.js";

export interface FrontendDeps {
  apps: ApplicationRegistry;
  sessions: SessionRegistry;
  orchestrator: Orchestrator;
  hub: WatchHub;
  feed: SessionsFeed;
  commit: GroupCommit;
  /** What GetClusterInfo answers right now. */
  clusterInfo(): kiln.ClusterInfo;
}

const OK = () => create(flame.ResultSchema, { returnCode: 0 });

/**
 * flame.v1.Frontend: Flame's client API. Every mutation is acknowledged only
 * after the commit that holds it.
 */
export function frontendService(d: FrontendDeps): ServiceImpl<typeof flame.Frontend> {
  const { apps, sessions, orchestrator, hub, commit } = d;
  return {
    async registerApplication(req) {
      apps.register(req.name, req.application);
      await commit.flushed();
      return OK();
    },
    async updateApplication(req) {
      apps.update(req.name, req.application);
      await commit.flushed();
      return OK();
    },
    async unregisterApplication(req) {
      apps.unregister(req.name);
      await commit.flushed();
      return OK();
    },
    getApplication(req) {
      return toApplicationMessage(apps.require(req.name));
    },
    listApplication() {
      return create(flame.ApplicationListSchema, { applications: apps.list().map(toApplicationMessage) });
    },
    listExecutor() {
      return create(flame.ExecutorListSchema, {
        executors: [...orchestrator.cluster.executors.values()].map(toExecutorMessage),
      });
    },
    listNodes() {
      return create(flame.NodeListSchema, { nodes: [...orchestrator.cluster.nodes.values()].map(toNodeMessage) });
    },
    getNode(req) {
      const node = orchestrator.cluster.nodes.get(req.name);
      if (!node) throw new NotFoundError("node", req.name);
      return create(flame.GetNodeResponseSchema, { node: toNodeMessage(node) });
    },
    async createSession(req) {
      const s = sessions.create(req.sessionId, req.session);
      await commit.flushed();
      orchestrator.requestCycle();
      return toSessionMessage(s);
    },
    async openSession(req) {
      const s = sessions.open(req.sessionId, req.session);
      await commit.flushed();
      orchestrator.requestCycle();
      return toSessionMessage(s);
    },
    async closeSession(req) {
      const s = sessions.close(req.sessionId);
      await commit.flushed();
      return toSessionMessage(s);
    },
    async deleteSession(req) {
      const s = sessions.delete(req.sessionId);
      await commit.flushed();
      return toSessionMessage(s);
    },
    getSession(req) {
      return toSessionMessage(sessions.require(req.sessionId));
    },
    listSession() {
      return create(flame.SessionListSchema, { sessions: sessions.list().map((s) => toSessionMessage(s)) });
    },
    async createTask(req) {
      const sessionId = req.task?.sessionId ?? "";
      // As created (Pending), as Flame answers: by the commit it may already be running.
      const created = toTaskMessage(sessions.createTask(sessionId, req.task?.input ?? new Uint8Array()));
      await commit.flushed();
      return created;
    },
    async getTask(req) {
      return toTaskMessage(await sessions.findTask(req.sessionId, req.taskId));
    },
    async *watchTask(req, ctx) {
      const s = sessions.require(req.sessionId);
      let task: StoredTask | undefined = sessions.liveTask(s, req.taskId);
      if (!task) {
        // Finished, or pending in the session's backlog: read from the store. A backlog task that is
        // still there has not changed since; one that left it is in memory now, or finished.
        const stored = await sessions.findTask(req.sessionId, req.taskId);
        task = sessions.liveTask(s, req.taskId) ?? (s.backlog.has(stored.id) ? stored : undefined);
        if (!task) task = await sessions.findTask(req.sessionId, req.taskId);
      }
      const watched = task;
      const queue = hub.watchTask(watched);
      yield* untilAborted(queue, ctx.signal, () => hub.unwatchTask(watched, queue));
    },
    async *listTask(req) {
      const s = sessions.require(req.sessionId);
      // Page by page from the store: a session of any size is streamed, never built in memory.
      for await (const t of sessions.tasksInOrder(s)) yield toTaskMessage(t);
    },
  };
}
