import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { toKilnError } from "@kiln/sdk/internal";
import { flame, kiln } from "@kiln/sdk/proto";
import { AsyncQueue, untilAborted } from "../../util/async-queue.js";
import type { FrontendDeps } from "./frontend-service.js";

/** kiln.v1.Frontend: batch task creation (unary or streamed), one watch stream per session, cancel. */
export function kilnFrontendService(d: FrontendDeps): ServiceImpl<typeof kiln.Frontend> {
  const { sessions, orchestrator, hub, commit } = d;

  /** Creates at once and answers after the commit; never rejects: a refusal is an answer on the stream. */
  const submit = (req: kiln.CreateTasksRequest): Promise<kiln.SubmitTasksResponse> => {
    const refused = (err: unknown) => {
      const e = toKilnError(err);
      return create(kiln.SubmitTasksResponseSchema, { error: { code: e.code, message: e.message } });
    };
    try {
      const first = sessions.createTasks(req.sessionId, req.inputs);
      return commit
        .flushed()
        .then(
          () => create(kiln.SubmitTasksResponseSchema, { firstTaskId: BigInt(first), count: req.inputs.length }),
          refused,
        );
    } catch (err) {
      return Promise.resolve(refused(err));
    }
  };

  return {
    async createTasks(req) {
      const first = sessions.createTasks(req.sessionId, req.inputs);
      await commit.flushed();
      return create(kiln.CreateTasksResponseSchema, { firstTaskId: BigInt(first), count: req.inputs.length });
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
      const queue = hub.watchSession(s, { snapshot: req.snapshot, omitOutput: req.omitOutput });
      if (s.state === flame.SessionState.Closed) hub.sessionEnded(s);
      yield* untilAborted(queue, ctx.signal, () => hub.unwatchSession(s.id, queue));
    },
    async cancelTasks(req) {
      const { cancelled, wereRunning } = sessions.cancel(req.sessionId, req.taskIds);
      orchestrator.cancelRunning(wereRunning);
      await commit.flushed();
      return create(kiln.CancelTasksResponseSchema, { cancelled });
    },
  };
}
