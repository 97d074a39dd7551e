import { create } from "@bufbuild/protobuf";
import { ErrorCode, KilnError, TimeoutError, AsyncQueue } from "@kiln/protocol";
import { kiln } from "@kiln/protocol/proto";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { isConnectionLoss, nextBackoffMs } from "./connection-loss.js";
import type { ClientContext, Stoppable } from "./context.js";

export interface CreatedTasks {
  firstTaskId: bigint;
  count: number;
}

// Bigger batches go as unary calls: a message over the server's size limit would end the
// shared stream and fail every other request on it, and a large batch gains nothing from it.
const MAX_STREAMED_BYTES = 1024 * 1024;
const LINGER_MS = 1_000;

const KNOWN_CODES = new Set<string>(Object.values(ErrorCode));

interface Pending {
  resolve(created: CreatedTasks): void;
  reject(err: KilnError): void;
}

/** One open SubmitTasks stream: requests go out in order and responses settle them in the same order. */
class SubmitStream {
  // Not a BatchQueue: each request is its own message anyway (its session's batch of the turn), and
  // waiting for the end of the turn would hold a lone call's request back by an event-loop iteration.
  private readonly requests = new AsyncQueue<kiln.CreateTasksRequest>();
  private readonly pending: Pending[] = [];
  private readonly abort = new AbortController();
  private idleTimer: NodeJS.Timeout | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private failure: KilnError | undefined;

  constructor(
    private readonly ctx: ClientContext,
    private readonly timeoutMs: number,
    private readonly ended: (s: SubmitStream) => void,
  ) {
    void this.read();
  }

  submit(request: kiln.CreateTasksRequest): Promise<CreatedTasks> {
    if (this.failure) return Promise.reject(this.failure);
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.requests.push(request);
      // Not pushed back by later requests: a server that stopped answering times out all the same.
      if (!this.deadline) this.armDeadline();
    });
  }

  /** Ends the stream; requests still unanswered fail with `reason`. */
  stop(reason: KilnError): void {
    this.fail(reason);
  }

  private async read(): Promise<void> {
    try {
      for await (const response of this.ctx.kiln.submitTasks(this.requests, { signal: this.abort.signal })) {
        const waiter = this.pending.shift();
        if (!waiter) throw new KilnError(ErrorCode.Internal, "SubmitTasks answered a request that was never sent");
        this.armDeadline();
        if (response.error) waiter.reject(refusal(response.error));
        else waiter.resolve({ firstTaskId: response.firstTaskId, count: response.count });
        if (this.pending.length === 0) this.lingerThenClose();
      }
      this.fail(new KilnError(ErrorCode.Unavailable, "the SubmitTasks stream ended"));
    } catch (e) {
      const reason: unknown = this.abort.signal.reason;
      this.fail(reason instanceof KilnError ? reason : this.ctx.toError(e));
    }
  }

  /** Each answer must come within the client's request timeout of the previous one (or of the request). */
  private armDeadline(): void {
    clearTimeout(this.deadline);
    this.deadline =
      this.pending.length === 0
        ? undefined
        : setTimeout(() => this.fail(new TimeoutError("creating tasks (SubmitTasks)", this.timeoutMs)), this.timeoutMs);
  }

  private lingerThenClose(): void {
    this.idleTimer = setTimeout(() => {
      if (this.pending.length > 0) return;
      // Closing our side lets the server end the stream; a later submit opens a new one.
      this.ended(this);
      this.requests.end();
    }, LINGER_MS);
    this.idleTimer.unref();
  }

  private fail(reason: KilnError): void {
    if (this.failure) return;
    this.failure = reason;
    clearTimeout(this.idleTimer);
    clearTimeout(this.deadline);
    this.ended(this);
    this.requests.end();
    this.abort.abort(reason);
    for (const p of this.pending.splice(0)) p.reject(reason);
  }
}

function refusal(error: kiln.SubmitError): KilnError {
  const code = KNOWN_CODES.has(error.code) ? (error.code as ErrorCode) : ErrorCode.Internal;
  return new KilnError(code, error.message);
}

/**
 * Creates tasks for every session of one client over a single kiln.v1
 * SubmitTasks stream. A message on an open stream costs a fraction of a
 * unary CreateTasks call, which was most of a lone task's round trip. The
 * stream opens on first use and closes after a second without requests, so
 * it never keeps a process alive.
 *
 * Each batch carries an idempotency key. When the connection is lost before
 * the answer, the batch is resent with the same key (with back-off, within
 * the client's patience): a control plane that created it already answers
 * with the same ids, so nothing is created twice.
 */
export class TaskSubmitter implements Stoppable {
  private stream: SubmitStream | undefined;

  constructor(private readonly ctx: ClientContext) {}

  /** Creates tasks; `outputTo` is the watcher key their outputs go to ("" for every watcher). */
  async createTasks(sessionId: string, inputs: Uint8Array[], outputTo = ""): Promise<CreatedTasks> {
    this.ctx.ensureOpen();
    const request = create(kiln.CreateTasksRequestSchema, {
      sessionId,
      inputs,
      idempotencyKey: randomUUID(),
      outputTo,
    });
    const bytes = inputs.reduce((sum, input) => sum + input.byteLength, 0);
    const giveUpAt = Date.now() + this.ctx.patienceMs;
    for (let backoffMs: number | undefined; ;) {
      try {
        return await (bytes > MAX_STREAMED_BYTES ? this.unary(request) : this.open().submit(request));
      } catch (e) {
        const error = this.ctx.toError(e);
        backoffMs = nextBackoffMs(backoffMs);
        // A server that answers nothing within requestTimeoutMs is not resent to: it is up, and hung.
        const resend = isConnectionLoss(error) && error.code !== ErrorCode.DeadlineExceeded;
        if (this.ctx.closed || !resend || Date.now() + backoffMs > giveUpAt) throw error;
        await sleep(backoffMs);
        this.ctx.ensureOpen();
      }
    }
  }

  stop(reason: KilnError): void {
    this.stream?.stop(reason);
  }

  private open(): SubmitStream {
    if (this.stream) return this.stream;
    const stream = new SubmitStream(this.ctx, this.ctx.unary.timeoutMs ?? 30_000, (s) => {
      if (this.stream !== s) return;
      this.stream = undefined;
      this.ctx.untrack(this);
    });
    this.stream = stream;
    this.ctx.track(this);
    return stream;
  }

  private async unary(request: kiln.CreateTasksRequest): Promise<CreatedTasks> {
    const created = await this.ctx.call((o) => this.ctx.kiln.createTasks(request, o));
    return { firstTaskId: created.firstTaskId, count: created.count };
  }
}
