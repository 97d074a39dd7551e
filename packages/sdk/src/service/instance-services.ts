import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import * as flame from "../protocol/flame.js";
import * as kiln from "../protocol/kiln.js";
import { BatchQueue } from "./batch-queue.js";
import { runHook, runTask, toSessionContextInfo, type ServiceHandlers } from "./handlers.js";

/** flame.v1.Instance: one call per task, as Flame's executors make them. */
export function flameInstance(handlers: ServiceHandlers): ServiceImpl<typeof flame.Instance> {
  return {
    onSessionEnter: (ctx) => runHook(() => handlers.onSessionEnter?.(toSessionContextInfo(ctx))),
    onTaskInvoke: (task) => runTask(handlers, task),
    onSessionLeave: () => runHook(() => handlers.onSessionLeave?.()),
  };
}

/**
 * kiln.v1.Instance/Invoke: tasks arrive in batches on one stream and run
 * concurrently as they arrive; results that finish in the same event-loop
 * turn leave as one response. The first, empty response tells the agent the
 * stream is supported.
 */
export function kilnInstance(handlers: ServiceHandlers): ServiceImpl<typeof kiln.Instance> {
  return {
    async *invoke(requests) {
      const outcomes = new BatchQueue<kiln.InvokeOutcome>();
      let running = 0;
      let inputEnded = false;
      const endIfIdle = () => {
        if (inputEnded && running === 0) outcomes.end();
      };
      const start = (task: flame.TaskContext) => {
        running++;
        void runTask(handlers, task).then((result) => {
          running--;
          outcomes.push(create(kiln.InvokeOutcomeSchema, { taskId: task.taskId, result }));
          endIfIdle();
        });
      };
      void (async () => {
        try {
          for await (const request of requests) for (const task of request.tasks) start(task);
        } catch {
          // The agent went away; the tasks still running finish and nobody reads them.
        }
        inputEnded = true;
        endIfIdle();
      })();
      yield create(kiln.InvokeResponseSchema, {});
      for await (const batch of outcomes) yield create(kiln.InvokeResponseSchema, { outcomes: batch });
    },
  };
}
