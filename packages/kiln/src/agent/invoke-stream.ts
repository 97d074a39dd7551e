import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { BatchQueue, type LazyAbort } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";

// Tasks per InvokeRequest: big enough to batch, small enough to keep messages small.
const MAX_TASKS_PER_REQUEST = 512;

interface Waiter {
  resolve(result: flame.TaskResult): void;
  reject(err: Error): void;
  /** The task's place in the order tasks were sent on this stream, from 1. */
  seq: number;
  accepted: boolean;
  onAccepted: (() => void) | undefined;
}

/**
 * Why a task failed when it never reached the service: the stream broke
 * before the service acknowledged it (the process was dying, or dead but not
 * yet reaped). The task did not start, so it can be given to another process.
 */
export class TaskNotDelivered extends Error {
  constructor(cause: Error) {
    super(`the task never reached the service: ${cause.message}`, { cause });
    this.name = "TaskNotDelivered";
  }
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
  /** Waiters the service has not acknowledged yet, in the order their tasks were sent. */
  private unacknowledged: Waiter[] = [];
  private sent = 0;
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

  /** False once the stream broke: the service is going away. */
  get usable(): boolean {
    return this.failure === undefined;
  }

  /**
   * Resolves the service's result; rejects if the stream breaks first, with
   * TaskNotDelivered if the service had not acknowledged the task (then
   * `onAccepted` was never called). `abort` asks the service to abort the
   * task; the promise still settles with its answer, once the service has
   * stopped it.
   */
  invoke(task: flame.TaskContext, abort: LazyAbort, onAccepted?: () => void): Promise<flame.TaskResult> {
    if (this.failure) return Promise.reject(new TaskNotDelivered(this.failure));
    return new Promise((resolve, reject) => {
      let list = this.waiters.get(task.taskId);
      if (!list) this.waiters.set(task.taskId, (list = []));
      const waiter: Waiter = { resolve, reject, seq: ++this.sent, accepted: false, onAccepted };
      list.push(waiter);
      this.unacknowledged.push(waiter);
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
        this.acknowledge(Number(r.value.accepted));
        for (const outcome of r.value.outcomes) this.settle(outcome);
      }
      this.failAll(new Error("the service ended the invoke stream"));
    } catch (err) {
      this.failAll(ConnectError.from(err));
    }
  }

  /** Marks the first `accepted` tasks sent as received by the service. */
  private acknowledge(accepted: number): void {
    if (this.unacknowledged[0] === undefined || this.unacknowledged[0].seq > accepted) return;
    const firstLeft = this.unacknowledged.findIndex((w) => w.seq > accepted);
    const done = firstLeft === -1 ? this.unacknowledged : this.unacknowledged.slice(0, firstLeft);
    this.unacknowledged = firstLeft === -1 ? [] : this.unacknowledged.slice(firstLeft);
    for (const w of done) {
      w.accepted = true;
      w.onAccepted?.();
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
    this.unacknowledged = [];
    for (const w of waiters) w.reject(w.accepted ? err : new TaskNotDelivered(err));
  }
}
