import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { flame, kiln } from "@kiln/sdk/proto";
import { untilAborted } from "../../util/async-queue.js";
import type { FrontendDeps } from "./frontend-service.js";

/** kiln.v1.Frontend: batch task creation, one watch stream per session, cancel. */
export function kilnFrontendService(d: FrontendDeps): ServiceImpl<typeof kiln.Frontend> {
  const { sessions, orchestrator, hub, commit } = d;
  return {
    async createTasks(req) {
      const first = sessions.createTasks(req.sessionId, req.inputs);
      await commit.flushed();
      return create(kiln.CreateTasksResponseSchema, { firstTaskId: BigInt(first), count: req.inputs.length });
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
