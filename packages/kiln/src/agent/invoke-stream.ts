import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { BatchQueue, type LazyAbort } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";

// Tasks per InvokeRequest: big enough to batch, small enough to keep messages small.
const MAX_TASKS_PER_REQUEST = 512;

interface Waiter {
  resolve(result: flame.TaskResult): void;
  reject(err: Error): void;
}

/** What goes out on the stream, in order: a task to run, or the id of one to abort. */
type Outgoing = { task: flame.TaskContext } | { cancel: string };

/**
 * One kiln.v1.Instance/Invoke stream to a service: tasks given in one
 * event-loop turn go out as one request, outcomes come back in batches and
 * settle the matching `invoke()` promises.
 */
export class InvokeStream {
  private readonly requests = new BatchQueue<Outgoing>(MAX_TASKS_PER_REQUEST);
  private readonly waiters = new Map<string, Waiter[]>();
  private readonly abort = new AbortController();
  private failure: Error | undefined;

  private constructor() {}

  /**
   * Opens the stream and waits up to `timeoutMs` for the service's first,
   * empty response. Resolves the stream, or why the service cannot use one
   * (UNIMPLEMENTED: a Flame service; or no answer in time).
   */
  static async open(transport: Transport, timeoutMs: number): Promise<InvokeStream | { unsupported: string }> {
    const s = new InvokeStream();
    const responses = createClient(kiln.Instance, transport)
      .invoke(s.requestMessages(), { signal: s.abort.signal })
      [Symbol.asyncIterator]();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
    try {
      const first = await Promise.race([responses.next(), timeout]);
      if (first === "timeout") {
        s.close();
        return { unsupported: `no answer on kiln.v1.Instance/Invoke within ${timeoutMs} ms` };
      }
      if (first.done) return { unsupported: "kiln.v1.Instance/Invoke ended at once" };
    } catch (err) {
      s.close();
      const e = ConnectError.from(err);
      return { unsupported: e.code === Code.Unimplemented ? "UNIMPLEMENTED" : e.message };
    } finally {
      clearTimeout(timer);
    }
    void s.read(responses);
    return s;
  }

  /** False once the stream broke; callers then use unary calls. */
  get usable(): boolean {
    return this.failure === undefined;
  }

  /**
   * Resolves the service's result; rejects if the stream breaks first.
   * `abort` asks the service to abort the task; the promise still settles
   * with its answer, once the service has stopped it.
   */
  invoke(task: flame.TaskContext, abort: LazyAbort): Promise<flame.TaskResult> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      let list = this.waiters.get(task.taskId);
      if (!list) this.waiters.set(task.taskId, (list = []));
      list.push({ resolve, reject });
      this.requests.push({ task });
      abort.onAbort(() => this.requests.push({ cancel: task.taskId }));
    });
  }

  /** Ends the stream; tasks still waiting fail. */
  close(): void {
    this.requests.end();
    this.abort.abort();
    this.failAll(new Error("the invoke stream was closed"));
  }

  /** A service applies a request's cancels before its tasks, so a cancel that follows a task starts a new request. */
  private async *requestMessages(): AsyncGenerator<kiln.InvokeRequest> {
    for await (const batch of this.requests) {
      let request = create(kiln.InvokeRequestSchema);
      for (const item of batch) {
        if ("task" in item) {
          request.tasks.push(item.task);
          continue;
        }
        if (request.tasks.length > 0) {
          yield request;
          request = create(kiln.InvokeRequestSchema);
        }
        request.cancelTaskIds.push(item.cancel);
      }
      yield request;
    }
  }

  private async read(responses: AsyncIterator<kiln.InvokeResponse>): Promise<void> {
    try {
      for (;;) {
        const r = await responses.next();
        if (r.done) break;
        for (const outcome of r.value.outcomes) this.settle(outcome);
      }
      this.failAll(new Error("the service ended the invoke stream"));
    } catch (err) {
      this.failAll(ConnectError.from(err));
    }
  }

  private settle(outcome: kiln.InvokeOutcome): void {
    const list = this.waiters.get(outcome.taskId);
    const waiter = list?.shift();
    if (!waiter) return;
    if (list!.length === 0) this.waiters.delete(outcome.taskId);
    waiter.resolve(outcome.result ?? create(flame.TaskResultSchema, { returnCode: 0 }));
  }

  private failAll(err: Error): void {
    this.failure ??= err;
    this.requests.end();
    const waiters = [...this.waiters.values()].flat();
    this.waiters.clear();
    for (const w of waiters) w.reject(err);
  }
}
