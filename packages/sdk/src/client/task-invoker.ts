import { ErrorCode, KilnError } from "@kiln/protocol";
import type { ClientContext } from "./context.js";
import { DEFAULT_WATCH_TIMINGS, SessionWatch, type TaskWaiter, type WatchTimings } from "./session-watch.js";
import { Batcher, DEFAULT_BATCH_LIMITS, type BatchLimits } from "./task-batcher.js";
import type { TaskUpdate } from "./task-update.js";

interface PendingTask {
  input: Uint8Array;
  waiter: TaskWaiter;
}

/**
 * The run()/invoke() hot path of one Session object: calls are gathered into
 * one task-creation request per tick (on the client's SubmitTasks stream) and
 * their results come back over one shared WatchSession stream.
 */
export class TaskInvoker {
  private readonly watch: SessionWatch;
  private readonly batcher: Batcher<PendingTask>;

  constructor(
    private readonly ctx: ClientContext,
    private readonly sessionId: string,
    options: { limits?: BatchLimits; timings?: WatchTimings } = {},
  ) {
    this.watch = new SessionWatch(
      ctx,
      sessionId,
      options.timings ?? { ...DEFAULT_WATCH_TIMINGS, reconnectTimeoutMs: ctx.patienceMs },
    );
    this.batcher = new Batcher<PendingTask>(
      (batch) => this.send(batch),
      (p) => p.input.length,
      options.limits ?? DEFAULT_BATCH_LIMITS,
    );
  }

  /** Creates a task and resolves with its terminal update. */
  invoke(input: Uint8Array, onUpdate?: (u: TaskUpdate) => void): Promise<TaskUpdate> {
    return new Promise((settle, fail) => {
      this.ctx.ensureOpen();
      this.batcher.add({ input, waiter: { settle, fail, ...(onUpdate ? { onUpdate } : {}) } });
    });
  }

  private async send(batch: PendingTask[]): Promise<void> {
    let release: ((lastTaskId?: bigint) => void) | undefined;
    try {
      // The stream must be live before the tasks exist, or their first updates could be missed.
      release = await this.watch.acquire();
      const inputs = batch.map((p) => p.input);
      // Only this Session object's watch gets these tasks' outputs; other clients' watches see their states.
      const created = await this.ctx.submitter.createTasks(this.sessionId, inputs, this.watch.outputKey);
      if (created.count !== batch.length)
        throw new KilnError(
          ErrorCode.Internal,
          `CreateTasks created ${created.count} tasks for ${batch.length} inputs in session "${this.sessionId}"`,
        );
      batch.forEach((p, i) => this.watch.track(String(created.firstTaskId + BigInt(i)), p.waiter));
      release(created.firstTaskId + BigInt(created.count) - 1n);
    } catch (e) {
      release?.();
      const error = this.notCreated(this.ctx.toError(e));
      for (const p of batch) p.waiter.fail(error);
    }
  }

  /**
   * A batch that got no answer is UNAVAILABLE whatever broke the connection
   * (a reset can surface as CANCELLED or INTERNAL), so a caller can tell it
   * from a task that exists but whose outcome is unknown (OUTCOME_UNKNOWN).
   */
  private notCreated(error: KilnError): KilnError {
    const lost = error.code === ErrorCode.Cancelled || error.code === ErrorCode.Internal;
    if (this.ctx.closed || !lost) return error;
    return new KilnError(
      ErrorCode.Unavailable,
      `could not create the task in session "${this.sessionId}": ${error.message}`,
      { cause: error },
    );
  }
}
