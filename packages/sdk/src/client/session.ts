import { ErrorCode, TimeoutError } from "@kiln/protocol";
import type { flame } from "@kiln/protocol/proto";
import type { KilnClient } from "./client.js";
import { contextOf, type ClientContext } from "./context.js";
import { chunk, DEFAULT_BATCH_LIMITS } from "./task-batcher.js";
import { toBytes } from "./specs.js";
import { TaskInvoker } from "./task-invoker.js";
import { isTerminal, outputOf, toTaskUpdate, type TaskUpdate } from "./task-update.js";

type Input = Uint8Array | string;

/**
 * A handle to one session. Keep one Session object per session and share it:
 * all its run()/invoke() calls share one watch stream and batch their task
 * creation.
 *
 * @example
 * const session = await client.createSession({ application: "echo" });
 * const out = await session.run("hello");
 * await session.close();
 */
export class Session {
  private invoker: TaskInvoker | undefined;

  constructor(
    readonly client: KilnClient,
    readonly id: string,
  ) {}

  private get ctx(): ClientContext {
    return contextOf(this.client);
  }

  /**
   * The session's current status.
   *
   * @example
   * const { status } = await session.info(); console.log(status?.pending);
   */
  info(): Promise<flame.Session> {
    return this.client.getSession(this.id);
  }

  /**
   * Creates a task and resolves with its output once it Succeeds; rejects
   * with TaskFailedError (task id + message) if it ends Failed or Cancelled.
   *
   * @example
   * const outputs = await Promise.all(inputs.map((i) => session.run(i)));
   */
  async run(input?: Input): Promise<Uint8Array> {
    return outputOf(await this.invoke(input));
  }

  /**
   * Like run(), but resolves with the terminal update whatever the state,
   * and reports each state change to `onUpdate` (after a reconnect a state
   * may be reported twice).
   *
   * @example
   * const done = await session.invoke("x", (u) => console.log(u.taskId, flame.TaskState[u.state]));
   */
  invoke(input?: Input, onUpdate?: (u: TaskUpdate) => void): Promise<TaskUpdate> {
    this.invoker ??= new TaskInvoker(this.ctx, this.id);
    return this.invoker.invoke(toBytes(input), onUpdate);
  }

  /**
   * Creates one task (flame.v1 CreateTask) without waiting for it.
   *
   * @example
   * const task = await session.createTask("input"); console.log(task.metadata?.id);
   */
  createTask(input?: Input): Promise<flame.Task> {
    const task = { sessionId: this.id, input: toBytes(input) };
    return this.ctx.call((o) => this.ctx.flame.createTask({ task }, o));
  }

  /**
   * Creates many tasks in as few requests as possible; returns their ids in input order.
   *
   * @example
   * const ids = await session.createTasks(["a", "b", "c"]); // ["1", "2", "3"] in a new session
   */
  async createTasks(inputs: Input[]): Promise<string[]> {
    const ids: string[] = [];
    for (const part of chunk(inputs.map(toBytes), (b) => b.length, DEFAULT_BATCH_LIMITS)) {
      const created = await this.ctx.call((o) => this.ctx.kiln.createTasks({ sessionId: this.id, inputs: part }, o));
      for (let i = 0; i < created.count; i++) ids.push(String(created.firstTaskId + BigInt(i)));
    }
    return ids;
  }

  /**
   * One task's spec and status.
   *
   * @example
   * const task = await session.getTask("1"); console.log(task.status?.state);
   */
  getTask(taskId: string): Promise<flame.Task> {
    return this.ctx.call((o) => this.ctx.flame.getTask({ taskId, sessionId: this.id }, o));
  }

  /**
   * Every task of the session, streamed.
   *
   * @example
   * for await (const task of session.listTasks()) console.log(task.metadata?.id);
   */
  async *listTasks(): AsyncIterable<flame.Task> {
    const ctx = this.ctx;
    ctx.ensureOpen();
    try {
      yield* ctx.flame.listTask({ sessionId: this.id });
    } catch (e) {
      throw ctx.toError(e);
    }
  }

  /**
   * One page of the session's tasks in id order (kiln.v1 ListTasks): ids above `afterTaskId`, at most
   * `limit` (default 1,000, at most 10,000) and about 4 MiB. `next` is the `afterTaskId` of the next
   * page, undefined after the last.
   *
   * @example
   * for (let after: string | undefined = "0"; after !== undefined; ) {
   *   const page = await session.listTasksPage({ afterTaskId: after, limit: 500 });
   *   show(page.tasks);
   *   after = page.next;
   * }
   */
  async listTasksPage(
    options: { afterTaskId?: string; limit?: number; omitData?: boolean } = {},
  ): Promise<{ tasks: flame.Task[]; next: string | undefined }> {
    const r = await this.ctx.call((o) =>
      this.ctx.kiln.listTasks(
        {
          sessionId: this.id,
          afterTaskId: BigInt(options.afterTaskId ?? "0"),
          limit: options.limit ?? 0,
          omitData: options.omitData ?? false,
        },
        o,
      ),
    );
    return { tasks: r.tasks, next: r.nextAfterTaskId === 0n ? undefined : String(r.nextAfterTaskId) };
  }

  /**
   * Each state change of one task, ending at its terminal state, or quietly
   * when `signal` aborts. Throws TimeoutError when `timeoutMs` passes first.
   *
   * @example
   * for await (const t of session.watchTask("1", { timeoutMs: 60_000 })) console.log(t.status?.state);
   */
  async *watchTask(
    taskId: string,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): AsyncIterable<flame.Task> {
    const ctx = this.ctx;
    ctx.ensureOpen();
    const callOptions = {
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
      ...(options.signal ? { signal: options.signal } : {}),
    };
    try {
      for await (const task of ctx.flame.watchTask({ taskId, sessionId: this.id }, callOptions)) {
        yield task;
        if (task.status && isTerminal(task.status.state)) return;
      }
    } catch (e) {
      if (options.signal?.aborted && !ctx.closed) return;
      const error = ctx.toError(e);
      if (error.code === ErrorCode.DeadlineExceeded && options.timeoutMs !== undefined)
        throw new TimeoutError(`watching task ${this.id}/${taskId}`, options.timeoutMs);
      throw error;
    }
  }

  /**
   * Task state changes of the whole session as they arrive, in batches
   * (kiln.v1 WatchSession). With `snapshot`, the first batch is the current
   * state of every task, even when there is none. With `afterSeq` (the `seq`
   * of the last update a previous watch got) the first batch is every task
   * changed since, latest state each: a resume. `outputsFor` limits outputs to
   * tasks created with that key (see CreateTasksRequest.output_to). Ends once
   * the session is closed and all its tasks are terminal, or quietly when
   * `signal` aborts.
   *
   * @example
   * for await (const updates of session.watch({ snapshot: true, omitOutput: true })) progress(updates.length);
   */
  async *watch(
    options: {
      snapshot?: boolean;
      afterSeq?: bigint;
      omitOutput?: boolean;
      outputsFor?: string;
      signal?: AbortSignal;
    } = {},
  ): AsyncIterable<TaskUpdate[]> {
    const ctx = this.ctx;
    ctx.ensureOpen();
    const request = {
      sessionId: this.id,
      snapshot: options.snapshot ?? false,
      ...(options.afterSeq !== undefined ? { afterSeq: options.afterSeq } : {}),
      omitOutput: options.omitOutput ?? false,
      outputsFor: options.outputsFor ?? "",
    };
    try {
      for await (const msg of ctx.kiln.watchSession(request, options.signal ? { signal: options.signal } : {})) {
        if (msg.updates.length > 0 || (msg.ready && (request.snapshot || options.afterSeq !== undefined)))
          yield msg.updates.map((u) => toTaskUpdate(this.id, u));
        if (msg.sessionClosed) return;
      }
    } catch (e) {
      if (options.signal?.aborted && !ctx.closed) return;
      throw ctx.toError(e);
    }
  }

  /**
   * Cancels pending or running tasks (all non-terminal ones when `taskIds` is
   * absent or empty); resolves with how many were cancelled.
   *
   * @example
   * const n = await session.cancel(); // everything still in flight
   */
  async cancel(taskIds: string[] = []): Promise<number> {
    const res = await this.ctx.call((o) => this.ctx.kiln.cancelTasks({ sessionId: this.id, taskIds }, o));
    return res.cancelled;
  }

  /**
   * Closes the session: pending tasks are cancelled, so waiting run() calls reject.
   *
   * @example
   * const final = await session.close(); console.log(final.status?.succeed);
   */
  close(): Promise<flame.Session> {
    return this.client.closeSession(this.id);
  }
}
