import { ErrorCode, TaskFailedError, TimeoutError, withTimeout, SessionEvent } from "@kiln/protocol";
import { type KilnClient, type Session, type SessionOptions } from "@kiln/sdk";
import type { flame } from "@kiln/protocol/proto";
import { performance } from "node:perf_hooks";
import { PING_APPLICATION } from "../apps/ping/ping.js";
import { CommandFailed, InterruptedError } from "./exit-codes.js";

/** What `kiln ping` (and `kiln demo`) submit. */
export interface PingOptions {
  /** Application to run; default `kiln-ping`. */
  application?: string;
  tasks: number;
  /** Each task sleeps this long in the service. */
  durationMs?: number;
  /** Each task allocates this many bytes in the service. */
  memoryBytes?: number;
  /** Size of the session's common data. */
  commonDataBytes?: number;
  priority?: number;
  resreq?: string;
  /** Also return every task (for the per-task table), read before the session closes. */
  collectTasks?: boolean;
  /**
   * Aborting cancels the tasks still pending or running (running ones in their service), counts
   * them as they end, closes the session and returns with `interrupted` set.
   */
  signal?: AbortSignal;
  /**
   * Gives up (closing the session, throwing TimeoutError) when no task has finished for this long,
   * e.g. because no agent is connected. Default 60 000 ms.
   */
  stallTimeoutMs?: number;
}

export const DEFAULT_STALL_TIMEOUT_MS = 60_000;
/** After Ctrl-C, how long to wait for the cancelled tasks to be reported before giving the summary without them. */
const CANCELLED_REPORT_TIMEOUT_MS = 10_000;

/** How a task ended. */
export type TaskOutcome = "succeeded" | "failed" | "cancelled";

/** The numbers `kiln ping -o json` prints; the benchmark harness parses them. */
export interface PingSummary {
  session: string;
  tasks: number;
  succeeded: number;
  failed: number;
  /** Cancelled before they finished (Ctrl-C, `kiln cancel`, the session closed). */
  cancelled: number;
  /** First submission to last completion (session creation excluded, as in flmping). */
  durationMs: number;
  /** Tasks that ran to an end (succeeded or failed) per second of `durationMs`. */
  tasksPerSecond: number;
  /** Per task that ran to an end, submission to completion. */
  latencyMs: { p50: number; p99: number };
}

export interface PingHooks {
  onSessionCreated?(sessionId: string, elapsedMs: number): void;
  onTaskDone?(outcome: TaskOutcome): void;
}

export interface PingResult {
  summary: PingSummary;
  /** Present when `collectTasks` was set. */
  tasks?: flame.Task[];
  /** `signal` aborted: the tasks still unfinished then were cancelled. */
  interrupted: boolean;
}

/**
 * Nearest-rank percentile of `values` (0 when empty); `p` in (0, 100].
 *
 * @example
 * percentile([5, 1, 3], 50) // 3
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

const round = (n: number, digits: number): number => Number(n.toFixed(digits));

/** Builds the summary from the outcome counts, per-task latencies and the wall-clock duration. */
export function summarize(
  session: string,
  tasks: number,
  outcomes: Record<TaskOutcome, number>,
  durationMs: number,
  latencies: readonly number[],
): PingSummary {
  const ran = outcomes.succeeded + outcomes.failed;
  return {
    session,
    tasks,
    ...outcomes,
    durationMs: round(durationMs, 1),
    tasksPerSecond: durationMs > 0 ? round((ran / durationMs) * 1000, 2) : 0,
    latencyMs: { p50: round(percentile(latencies, 50), 1), p99: round(percentile(latencies, 99), 1) },
  };
}

/**
 * Stops a wait that can no longer succeed: rejects with InterruptedError when `signal`
 * aborts, with TimeoutError when `progress()` was not called for `stallMs`, and with
 * whatever `stop()` is given.
 */
class WaitGuard {
  private lastProgress = performance.now();
  private fail: (err: Error) => void = () => {};
  private readonly stopped = new Promise<never>((_, reject) => (this.fail = reject));

  constructor(
    private readonly sessionId: string,
    private readonly stallMs: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    // stop() may come once nobody waits any more; that is not an unhandled rejection.
    this.stopped.catch(() => undefined);
  }

  progress(): void {
    this.lastProgress = performance.now();
  }

  /** Ends the wait with `err`. */
  stop(err: Error): void {
    this.fail(err);
  }

  async wait(work: Promise<unknown>): Promise<void> {
    const interrupt = () => this.fail(new InterruptedError(`session ${this.sessionId} was interrupted`));
    if (this.signal?.aborted) interrupt();
    this.signal?.addEventListener("abort", interrupt, { once: true });
    const watchdog = setInterval(() => this.checkStall(), Math.min(this.stallMs, 1000));
    try {
      await Promise.race([work, this.stopped]);
    } finally {
      clearInterval(watchdog);
      this.signal?.removeEventListener("abort", interrupt);
    }
  }

  private checkStall(): void {
    if (performance.now() - this.lastProgress < this.stallMs) return;
    const what = `waiting for the tasks of session ${this.sessionId} (none finished; is any agent connected? see \`kiln list -n\`)`;
    this.fail(new TimeoutError(what, this.stallMs));
  }
}

/**
 * Stops `guard` with a CommandFailed as soon as the control plane records that no
 * connected node can run the session, instead of waiting for the stall timeout.
 * Follows only the session's events, on the sessions feed; returns its stopper.
 */
function stopWhenUnschedulable(client: KilnClient, sessionId: string, guard: WaitGuard): () => void {
  const done = new AbortController();
  void (async () => {
    const changes = client.watchSessions({
      sessionIds: [sessionId],
      events: true,
      omitTaskChanges: true,
      signal: done.signal,
    });
    for await (const { sessions } of changes) {
      const event = sessions[0]?.status?.events.find((e) => e.code === SessionEvent.Unschedulable);
      if (event)
        return guard.stop(
          new CommandFailed(
            `${event.message} (session ${sessionId}, event ${event.code}); kiln ping closed the session`,
          ),
        );
    }
  })().catch(() => {
    // A cluster without the sessions feed: the stall timeout still ends the wait.
  });
  return () => done.abort();
}

function pingInput(o: PingOptions): Uint8Array {
  const input: { durationMs?: number; memoryBytes?: number } = {};
  if (o.durationMs !== undefined) input.durationMs = o.durationMs;
  if (o.memoryBytes !== undefined) input.memoryBytes = o.memoryBytes;
  return new TextEncoder().encode(JSON.stringify(input));
}

/**
 * Creates a session, submits `tasks` ping tasks at once (the SDK batches them), waits for
 * all of them, and closes the session. Task failures and cancellations are counted, not
 * thrown; anything else (e.g. the cluster going away, no node able to run the session)
 * is thrown once the session's unfinished tasks were cancelled.
 *
 * @example
 * const { summary } = await runPing(client, { tasks: 100 });
 * console.log(summary.tasksPerSecond);
 */
export async function runPing(client: KilnClient, o: PingOptions, hooks: PingHooks = {}): Promise<PingResult> {
  const sessionOptions: SessionOptions = { application: o.application ?? PING_APPLICATION };
  if (o.commonDataBytes !== undefined) sessionOptions.commonData = new Uint8Array(o.commonDataBytes).fill(0x6b);
  if (o.priority !== undefined) sessionOptions.priority = o.priority;
  if (o.resreq !== undefined) sessionOptions.resreq = o.resreq;

  const createStart = performance.now();
  const session = await client.createSession(sessionOptions);
  hooks.onSessionCreated?.(session.id, performance.now() - createStart);
  let result: PingResult;
  try {
    result = await submitAndWait(client, session, o, hooks);
  } catch (err) {
    // The session may be unreachable too; the first error is the one worth reporting.
    await stop(session).catch(() => {});
    throw err;
  }
  await session.close();
  return result;
}

/** Cancels what is still pending or running (running tasks in their service) and closes the session. */
async function stop(session: Session): Promise<void> {
  await session.cancel();
  await session.close();
}

async function submitAndWait(
  client: KilnClient,
  session: Session,
  o: PingOptions,
  hooks: PingHooks,
): Promise<PingResult> {
  const input = pingInput(o);
  const latencies: number[] = [];
  const outcomes: Record<TaskOutcome, number> = { succeeded: 0, failed: 0, cancelled: 0 };
  let unexpected: unknown;
  const guard = new WaitGuard(session.id, o.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS, o.signal);
  const ended = (outcome: TaskOutcome, submitted: number) => {
    outcomes[outcome]++;
    if (outcome !== "cancelled") latencies.push(performance.now() - submitted);
    guard.progress();
    hooks.onTaskDone?.(outcome);
  };
  const start = performance.now();
  const settled = Array.from({ length: o.tasks }, () => {
    const submitted = performance.now();
    return session.run(input).then(
      () => ended("succeeded", submitted),
      (err: unknown) => {
        if (!(err instanceof TaskFailedError)) unexpected ??= err;
        else ended(err.code === ErrorCode.TaskCancelled ? "cancelled" : "failed", submitted);
      },
    );
  });
  const all = Promise.all(settled);
  const stopWatching = stopWhenUnschedulable(client, session.id, guard);
  let interrupted = false;
  try {
    await guard.wait(all);
  } catch (err) {
    if (!(err instanceof InterruptedError)) throw err;
    interrupted = true;
    await stop(session);
    // Every task is finished now; their updates are on the way. A task refused by the closed session was never created.
    await withTimeout(all, CANCELLED_REPORT_TIMEOUT_MS, "the cancelled tasks' updates").catch(() => {});
    unexpected = undefined;
  } finally {
    stopWatching();
  }
  const durationMs = performance.now() - start;
  if (unexpected !== undefined) throw unexpected;

  const result: PingResult = {
    summary: summarize(session.id, o.tasks, outcomes, durationMs, latencies),
    interrupted,
  };
  if (o.collectTasks) {
    result.tasks = [];
    for await (const task of session.listTasks()) result.tasks.push(task);
  }
  return result;
}
