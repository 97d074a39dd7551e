import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { flame, kiln } from "@kiln/protocol/proto";
import { BatchQueue, LazyAbort } from "@kiln/protocol/transport";
import { runHook, runTask, toSessionContextInfo, type ServiceHandlers } from "./handlers.js";

const RECEIVED = null;

/** flame.v1.Instance: one call per task, as Flame's executors make them; a cancelled call aborts its task. */
export function flameInstance(handlers: ServiceHandlers): ServiceImpl<typeof flame.Instance> {
  return {
    onSessionEnter: (ctx) => runHook(() => handlers.onSessionEnter?.(toSessionContextInfo(ctx))),
    onTaskInvoke: (task, context) => runTask(handlers, task, context),
    onSessionLeave: () => runHook(() => handlers.onSessionLeave?.()),
  };
}

/**
 * kiln.v1.Instance/Invoke: tasks arrive in batches on one stream and run
 * concurrently as they arrive; results that finish in the same event-loop
 * turn leave as one response. The first, empty response tells the agent the
 * stream is supported. Every response carries how many tasks have been
 * received, and a request with tasks gets one even if none has finished, so
 * that the agent knows which tasks reached this process should it die. A
 * task named in `cancelTaskIds` is aborted, and so is every task still
 * running when the agent ends the stream (nobody reads their results any more).
 */
export function kilnInstance(handlers: ServiceHandlers): ServiceImpl<typeof kiln.Instance> {
  return {
    async *invoke(requests) {
      // `RECEIVED` asks for a response without an outcome, to acknowledge tasks just received.
      const outcomes = new BatchQueue<kiln.InvokeOutcome | typeof RECEIVED>();
      let received = 0n;
      // Per task id: a retried attempt may arrive while the cancelled one still winds down.
      const running = new Map<string, LazyAbort[]>();
      let inputEnded = false;
      const endIfIdle = () => {
        if (inputEnded && running.size === 0) outcomes.end();
      };
      const start = (task: flame.TaskContext) => {
        const abort = new LazyAbort();
        const attempts = running.get(task.taskId);
        if (attempts) attempts.push(abort);
        else running.set(task.taskId, [abort]);
        void runTask(handlers, task, abort).then((result) => {
          // The list is only changed in place, so while it holds this attempt it is this task's list.
          const attempts = running.get(task.taskId)!;
          if (attempts.length > 1) attempts.splice(attempts.indexOf(abort), 1);
          else running.delete(task.taskId);
          // Aborted tasks are answered too: the agent holds their slot until the answer comes.
          outcomes.push(create(kiln.InvokeOutcomeSchema, { taskId: task.taskId, result }));
          endIfIdle();
        });
      };
      const cancel = (taskId: string) => {
        for (const abort of running.get(taskId) ?? []) abort.abort();
      };
      void (async () => {
        try {
          for await (const request of requests) {
            for (const taskId of request.cancelTaskIds) cancel(taskId);
            if (request.tasks.length === 0) continue;
            received += BigInt(request.tasks.length);
            outcomes.push(RECEIVED);
            for (const task of request.tasks) start(task);
          }
        } catch {
          // The agent went away.
        }
        inputEnded = true;
        for (const taskId of running.keys()) cancel(taskId);
        endIfIdle();
      })();
      yield create(kiln.InvokeResponseSchema, {});
      for await (const batch of outcomes)
        yield create(kiln.InvokeResponseSchema, {
          outcomes: batch.filter((o) => o !== RECEIVED),
          accepted: received,
        });
    },
  };
}
