import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { AsyncQueue, InvalidArgumentError, toKilnError, untilAborted } from "@kiln/protocol";
import { flame, kiln } from "@kiln/protocol/proto";
import { checkWatcherKey, type SessionWatchOptions } from "../watch-hub.js";
import type { FrontendDeps } from "./frontend-service.js";
import { toSessionMessage, toTaskMessage } from "./messages.js";

const DEFAULT_PAGE = 1_000;
const MAX_PAGE = 10_000;
/** A page of tasks ends past this many bytes of inputs and outputs (it holds at least one task). */
const PAGE_BYTES = 4 * 1024 * 1024;

/** A page's size from a request's `limit` (0: the default). */
function pageLimit(limit: number): number {
  if (limit > MAX_PAGE) throw new InvalidArgumentError("limit", `is ${limit}, over the maximum of ${MAX_PAGE}`);
  return limit === 0 ? DEFAULT_PAGE : limit;
}

/**
 * kiln.v1.Frontend: batch task creation (unary or streamed), one watch stream per session, cancel,
 * the sessions feed, cluster info.
 */
export function kilnFrontendService(d: FrontendDeps): ServiceImpl<typeof kiln.Frontend> {
  const { sessions, orchestrator, hub, feed, commit } = d;

  /** Creates the tasks at once (an async function runs up to its first await) and settles after their commit. */
  const createTasks = async (req: kiln.CreateTasksRequest) => {
    checkWatcherKey("output_to", req.outputTo);
    const first = sessions.createTasks(req.sessionId, req.inputs, req.idempotencyKey, req.outputTo);
    await commit.flushed();
    return { firstTaskId: BigInt(first), count: req.inputs.length };
  };
  /** Never rejects: on the stream a refusal is an answer. */
  const submit = (req: kiln.CreateTasksRequest): Promise<kiln.SubmitTasksResponse> =>
    createTasks(req).then(
      (created) => create(kiln.SubmitTasksResponseSchema, created),
      (err: unknown) => {
        const e = toKilnError(err);
        return create(kiln.SubmitTasksResponseSchema, { error: { code: e.code, message: e.message } });
      },
    );

  return {
    async createTasks(req) {
      return create(kiln.CreateTasksResponseSchema, await createTasks(req));
    },
    async *submitTasks(requests) {
      // Requests are taken as they arrive, so those of one turn share a commit; answers keep their order.
      const answers = new AsyncQueue<Promise<kiln.SubmitTasksResponse>>();
      void (async () => {
        try {
          for await (const req of requests) answers.push(submit(req));
          answers.end();
        } catch (err) {
          answers.fail(err);
        }
      })();
      for await (const answer of answers) yield await answer;
    },
    async *watchSession(req, ctx) {
      const s = sessions.require(req.sessionId);
      checkWatcherKey("outputs_for", req.outputsFor);
      const queue = hub.watchSession(s, {
        begin: beginning(req, s.seq),
        read: (changedAfter) => sessions.tasksInOrder(s, changedAfter === undefined ? {} : { changedAfter }),
        omitOutput: req.omitOutput,
        outputsFor: req.outputsFor,
      });
      if (s.state === flame.SessionState.Closed) {
        hub.sessionEnded(s);
        // The hub ends streams at a commit; on an idle cluster none may come without asking.
        commit.flushSoon();
      }
      yield* untilAborted(queue, ctx.signal, () => hub.unwatchSession(s.id, queue));
    },
    async cancelTasks(req) {
      const { cancelled, wereRunning } = sessions.cancel(req.sessionId, req.taskIds);
      orchestrator.cancelRunning(wereRunning);
      await commit.flushed();
      return create(kiln.CancelTasksResponseSchema, { cancelled });
    },
    async *watchSessions(req, ctx) {
      const ids = req.sessionIds.length > 0 ? new Set(req.sessionIds) : undefined;
      const matching = ids ? [...ids].map((id) => sessions.require(id)) : sessions.list();
      const queue = feed.watch(matching, { ids, events: req.events, omitTaskChanges: req.omitTaskChanges });
      yield* untilAborted(queue, ctx.signal, () => feed.unwatch(queue));
    },
    getClusterInfo() {
      return d.clusterInfo();
    },
    async listTasks(req) {
      const s = sessions.require(req.sessionId);
      const limit = pageLimit(req.limit);
      const tasks: flame.Task[] = [];
      let bytes = 0;
      let last = 0;
      let more = false;
      // One more than the page, to know whether another page follows.
      for await (const t of sessions.tasksInOrder(s, {
        afterId: Number(req.afterTaskId),
        limit: limit + 1,
        pageSize: Math.min(limit + 1, DEFAULT_PAGE),
      })) {
        if (tasks.length === limit || bytes > PAGE_BYTES) {
          more = true;
          break;
        }
        tasks.push(toTaskMessage(t, req.omitData));
        if (!req.omitData) bytes += (t.input?.byteLength ?? 0) + (t.output?.byteLength ?? 0);
        last = t.id;
      }
      return create(kiln.ListTasksResponseSchema, { tasks, nextAfterTaskId: BigInt(more ? last : 0) });
    },
    listSessions(req) {
      const limit = pageLimit(req.limit);
      const after = req.afterSessionId;
      const matching = sessions
        .list()
        .filter(
          (s) =>
            s.id > after &&
            (req.application === "" || s.application === req.application) &&
            (req.state === undefined || s.state === req.state),
        )
        .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const page = matching.slice(0, limit);
      return create(kiln.ListSessionsResponseSchema, {
        sessions: page.map((s) => toSessionMessage(s)),
        nextAfterSessionId: matching.length > limit ? page[page.length - 1]!.id : "",
      });
    },
  };
}

/** Where a watch starts: a snapshot, after the sequence number a resuming watcher saw, or live. */
function beginning(req: kiln.WatchSessionRequest, lastSeq: number): SessionWatchOptions["begin"] {
  if (req.afterSeq === undefined) return req.snapshot ? "snapshot" : "live";
  if (req.snapshot)
    throw new InvalidArgumentError("after_seq", "cannot be combined with snapshot: a resume sends only what changed");
  if (req.afterSeq > BigInt(lastSeq))
    throw new InvalidArgumentError(
      "after_seq",
      `${req.afterSeq} is above the session's last change (${lastSeq}): it is not a number this session gave out`,
    );
  return { afterSeq: Number(req.afterSeq) };
}
