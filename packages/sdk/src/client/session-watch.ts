import { ErrorCode, FailedPreconditionError, KilnError, OutcomeUnknownError, TimeoutError } from "@kiln/protocol";
import type { kiln } from "@kiln/protocol/proto";
import { randomUUID } from "node:crypto";
import { isConnectionLoss, nextBackoffMs } from "./connection-loss.js";
import type { ClientContext, Stoppable } from "./context.js";
import { isTerminal, toTaskUpdate, type TaskUpdate } from "./task-update.js";

/** Receives one task's updates until its terminal one. */
export interface TaskWaiter {
  onUpdate?: (u: TaskUpdate) => void;
  settle(u: TaskUpdate): void;
  fail(reason: unknown): void;
}

export interface WatchTimings {
  /** Bound on the wait for the stream's first (`ready`) message. */
  readyTimeoutMs: number;
  /**
   * After a live stream breaks, how long to keep trying to reopen it before
   * failing the waiters (with OutcomeUnknownError: their tasks exist). The
   * client's patience.
   */
  reconnectTimeoutMs: number;
  /** How long an idle stream stays open for the next call. */
  lingerMs: number;
}

export const DEFAULT_WATCH_TIMINGS: WatchTimings = {
  readyTimeoutMs: 30_000,
  reconnectTimeoutMs: 30_000,
  lingerMs: 1_000,
};

interface Gate {
  promise: Promise<void>;
  open(): void;
  fail(reason: KilnError): void;
}

function gate(): Gate {
  let open!: () => void;
  let fail!: (reason: KilnError) => void;
  const promise = new Promise<void>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  // Nobody may be waiting when it fails; that must not be an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, open, fail };
}

/** One stream's lifetime, so a stopped loop can tell it was replaced. */
interface Run {
  stopped: boolean;
  ready: boolean;
  gate: Gate;
  attempt?: AbortController;
  wake?: () => void;
}

/** How a stream (re)opens: live only, with a snapshot, or resuming after a change number. */
type Start = "live" | "snapshot" | { afterSeq: bigint };

/**
 * One kiln.v1 WatchSession stream shared by every run()/invoke() of a Session
 * object. Opened on first use, closed after `lingerMs` without waiters,
 * reopened if it breaks while tasks are awaited: resuming after the last
 * change it got (only what it missed), or with a snapshot when it got none.
 * It asks for outputs only of the tasks created with its `outputKey`.
 */
export class SessionWatch implements Stoppable {
  /** The watcher key the tasks of this Session object are created with (CreateTasksRequest.output_to). */
  readonly outputKey = randomUUID();
  /** The highest change number received: a reopened stream resumes after it. */
  private lastSeq: bigint | undefined;
  private readonly waiters = new Map<string, TaskWaiter>();
  /** Updates for ids not known yet: they can beat the CreateTasks response that names them. */
  private readonly early = new Map<string, TaskUpdate[]>();
  private holds = 0;
  private run: Run | undefined;
  /** The session is closed or gone: nothing more will come. */
  private finalError: KilnError | undefined;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ctx: ClientContext,
    readonly sessionId: string,
    private readonly timings: WatchTimings = DEFAULT_WATCH_TIMINGS,
  ) {}

  /**
   * Waits until the stream is live, so no update after this point is missed,
   * and keeps it open and buffering unknown ids until `release` is called.
   * Pass `release` the last task id the request created so older buffered
   * updates (other clients' tasks) are dropped.
   */
  async acquire(): Promise<(lastTaskId?: bigint) => void> {
    this.ctx.ensureOpen();
    if (this.finalError) throw this.finalError;
    this.holds++;
    this.cancelIdle();
    let released = false;
    const release = (lastTaskId?: bigint) => {
      if (released) return;
      released = true;
      this.holds--;
      if (this.holds === 0) this.early.clear();
      else if (lastTaskId !== undefined) this.dropEarlyUpTo(Number(lastTaskId));
      this.maybeIdle();
    };
    try {
      await (this.run ?? this.start(false)).gate.promise;
      return release;
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Routes this task's updates (including early ones) to `waiter` until its terminal update. */
  track(taskId: string, waiter: TaskWaiter): void {
    this.waiters.set(taskId, waiter);
    const early = this.early.get(taskId);
    this.early.delete(taskId);
    for (const u of early ?? []) this.dispatch(u);
    if (!this.waiters.has(taskId)) return;
    const refused = this.ctx.closedError ?? this.finalError;
    if (refused) {
      this.waiters.delete(taskId);
      return waiter.fail(refused);
    }
    this.cancelIdle();
    // The stream may have given up while these ids were being created; a snapshot catches up.
    if (!this.run) this.start(true);
  }

  /** Fails every waiter with `reason` and closes the stream (the client is closing). */
  stop(reason: KilnError): void {
    this.stopWith(reason);
  }

  private start(catchUp: boolean): Run {
    const run: Run = { stopped: false, ready: false, gate: gate() };
    this.run = run;
    this.ctx.track(this);
    void this.loop(run, catchUp);
    return run;
  }

  /**
   * Streams, reopening after a connection loss (or after the control plane
   * ended it because this client fell behind) for as long as the client's
   * patience allows, resuming after the last change received. A first open
   * that fails gives up at once (no task of the caller exists yet), unless the
   * run started for tasks already created (`catchUp`).
   */
  private async loop(run: Run, catchUp: boolean): Promise<void> {
    let brokenSince: number | undefined = catchUp ? Date.now() : undefined;
    let backoffMs: number | undefined;
    let start: Start = catchUp ? this.restart() : "live";
    for (;;) {
      const error = await this.connectOnce(run, start);
      if (run.stopped) return;
      if (run.ready) {
        run.ready = false;
        run.gate = gate();
        brokenSince = Date.now();
        backoffMs = undefined;
      }
      if (this.finalError || this.ctx.closed) return this.stopWith(error);
      if (typeof start === "object" && error.code === ErrorCode.InvalidArgument) {
        // A control plane that no longer has the changes numbered so far (a new store) refuses the resume.
        this.lastSeq = undefined;
        start = "snapshot";
        continue;
      }
      const resumable = isConnectionLoss(error) || error.code === ErrorCode.ResourceExhausted;
      if (!resumable || brokenSince === undefined) return this.stopWith(error, true);
      const brokenMs = Date.now() - brokenSince;
      if (brokenMs > this.timings.reconnectTimeoutMs)
        return this.stopWith(
          new KilnError(
            error.code,
            `lost the watch stream of session "${this.sessionId}" and could not reopen it in ${brokenMs} ms: ${error.message}`,
            { cause: error },
          ),
          true,
        );
      if (this.waiters.size === 0 && this.holds === 0) {
        this.halt();
        return;
      }
      backoffMs = nextBackoffMs(backoffMs);
      await this.sleep(run, backoffMs);
      if (run.stopped) return;
      start = this.restart();
    }
  }

  /** Where a reopened stream starts: after the last change received, or (none yet) with a snapshot. */
  private restart(): Start {
    return this.lastSeq === undefined ? "snapshot" : { afterSeq: this.lastSeq };
  }

  /** Streams until the stream ends; returns why it ended. */
  private async connectOnce(run: Run, start: Start): Promise<KilnError> {
    const attempt = new AbortController();
    run.attempt = attempt;
    const { readyTimeoutMs } = this.timings;
    const readyTimer = setTimeout(
      () => attempt.abort(new TimeoutError(`opening the watch stream of session "${this.sessionId}"`, readyTimeoutMs)),
      readyTimeoutMs,
    );
    try {
      const stream = this.ctx.kiln.watchSession(
        {
          sessionId: this.sessionId,
          snapshot: start === "snapshot",
          ...(typeof start === "object" ? { afterSeq: start.afterSeq } : {}),
          omitOutput: false,
          outputsFor: this.outputKey,
        },
        { signal: attempt.signal },
      );
      for await (const msg of stream) {
        if (msg.ready) clearTimeout(readyTimer);
        this.receive(run, msg);
        if (this.finalError) return this.finalError;
      }
      return new KilnError(ErrorCode.Unavailable, `the watch stream of session "${this.sessionId}" ended unexpectedly`);
    } catch (e) {
      const reason: unknown = attempt.signal.reason;
      return reason instanceof KilnError ? reason : this.ctx.toError(e);
    } finally {
      clearTimeout(readyTimer);
    }
  }

  private receive(run: Run, msg: kiln.WatchSessionResponse): void {
    for (const u of msg.updates) this.dispatch(toTaskUpdate(this.sessionId, u));
    // Unset in the middle of a snapshot or resume, whose updates come in task id order.
    if (msg.throughSeq > 0n) this.lastSeq = msg.throughSeq;
    if (msg.ready && !run.ready) {
      run.ready = true;
      run.gate.open();
    }
    if (msg.sessionClosed) this.finalError = new FailedPreconditionError(`session "${this.sessionId}" is closed`);
  }

  private dispatch(u: TaskUpdate): void {
    const waiter = this.waiters.get(u.taskId);
    if (!waiter) {
      if (this.holds > 0) {
        const list = this.early.get(u.taskId);
        if (list) list.push(u);
        else this.early.set(u.taskId, [u]);
      }
      return;
    }
    const terminal = isTerminal(u.state);
    if (terminal) this.waiters.delete(u.taskId);
    try {
      waiter.onUpdate?.(u);
      if (terminal) waiter.settle(u);
    } catch (e) {
      // A throwing onUpdate ends that call, not the stream shared with others.
      this.waiters.delete(u.taskId);
      waiter.fail(e);
    }
    this.maybeIdle();
  }

  private dropEarlyUpTo(lastTaskId: number): void {
    for (const id of this.early.keys()) if (Number(id) <= lastTaskId) this.early.delete(id);
  }

  private maybeIdle(): void {
    if (!this.run || this.holds > 0 || this.waiters.size > 0 || this.idleTimer) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.holds === 0 && this.waiters.size === 0) this.halt();
    }, this.timings.lingerMs);
    this.idleTimer.unref();
  }

  private cancelIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** Closes the stream without failing anyone. */
  private halt(): Run | undefined {
    const run = this.run;
    this.cancelIdle();
    if (!run) return undefined;
    this.run = undefined;
    run.stopped = true;
    run.attempt?.abort();
    run.wake?.();
    this.ctx.untrack(this);
    return run;
  }

  /**
   * Ends the stream. Callers waiting to create tasks get `error`; waiters of
   * created tasks get it too, or, when the stream was lost (`lost`), an
   * OutcomeUnknownError naming their task: it exists, and may still run.
   */
  private stopWith(error: KilnError, lost = false): void {
    const run = this.halt();
    run?.gate.fail(error);
    // `early` stays until the CreateTasks in flight is answered: its tasks may already be settled there.
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const [taskId, w] of waiters) w.fail(lost ? new OutcomeUnknownError(this.sessionId, taskId, error) : error);
  }

  private sleep(run: Run, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        run.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      run.wake = done;
    });
  }
}
