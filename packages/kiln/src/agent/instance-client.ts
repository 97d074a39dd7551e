import { createClient, type Client } from "@connectrpc/connect";
import { createUnixSocketTransport, type LazyAbort } from "@kiln/protocol/transport";
import { flame } from "@kiln/protocol/proto";
import { InvokeStream } from "./invoke-stream.js";

/**
 * The agent's connection to one service process: session hooks as unary
 * flame.v1.Instance calls (each with a deadline), tasks over the batched
 * kiln.v1.Instance/Invoke stream when the service has it, else one
 * flame.v1.Instance/OnTaskInvoke call per task.
 */
export class InstanceClient {
  private readonly connection: ReturnType<typeof createUnixSocketTransport>;
  private readonly flame: Client<typeof flame.Instance>;
  private stream: InvokeStream | undefined;

  constructor(socketPath: string) {
    this.connection = createUnixSocketTransport(socketPath);
    this.flame = createClient(flame.Instance, this.connection.transport);
  }

  enterSession(ctx: flame.SessionContext, timeoutMs: number, signal?: AbortSignal): Promise<flame.Result> {
    return this.flame.onSessionEnter(ctx, { timeoutMs, ...(signal ? { signal } : {}) });
  }

  leaveSession(timeoutMs: number): Promise<flame.Result> {
    return this.flame.onSessionLeave({}, { timeoutMs });
  }

  /**
   * Switches task calls to the batched stream if the service supports it.
   * Resolves undefined when it does, else why not (the client then uses unary calls).
   */
  async useInvokeStream(timeoutMs: number): Promise<string | undefined> {
    const opened = await InvokeStream.open(this.connection.transport, timeoutMs);
    if (opened instanceof InvokeStream) {
      this.stream = opened;
      return undefined;
    }
    return opened.unsupported;
  }

  /**
   * The service's result for one task. No deadline: tasks may be long.
   * Rejects on an RPC failure. `abort` makes the service abort the task (on
   * the stream a cancel message, its answer still awaited; a unary call is
   * cancelled and rejects). `onAccepted` is called once the service has the
   * task; until then a rejection is TaskNotDelivered. A unary call cannot
   * tell, so its task counts as accepted once sent. Once a stream has broken
   * the service is going away, and tasks are not delivered to it.
   */
  invoke(task: flame.TaskContext, abort: LazyAbort, onAccepted?: () => void): Promise<flame.TaskResult> {
    if (this.stream) return this.stream.invoke(task, abort, onAccepted);
    onAccepted?.();
    return this.flame.onTaskInvoke(task, { signal: abort.signal });
  }

  /** False once the batched stream has broken: the service is going away. */
  get accepting(): boolean {
    return this.stream?.usable ?? true;
  }

  /** Drops the connection: calls in flight fail at once. */
  close(): void {
    this.stream?.close();
    this.connection.close();
  }
}
