import { TaskFailedError, TimeoutError } from "@kiln/protocol";
import { type KilnClient, type Session, type SessionOptions } from "@kiln/sdk";
import type { flame } from "@kiln/protocol/proto";
import { performance } from "node:perf_hooks";
import { PING_APPLICATION } from "../apps/ping/ping.js";
import { InterruptedError } from "./exit-codes.js";

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
  /** Aborting stops waiting, closes the session (cancelling what is left) and throws InterruptedError. */
  signal?: AbortSignal;
  /**
   * Gives up (closing the session, throwing TimeoutError) when no task has finished for this long,
   * e.g. because no agent is connected. Default 60 000 ms.
   */
  stallTimeoutMs?: number;
}

export const DEFAULT_STALL_TIMEOUT_MS = 60_000;

/** The numbers `kiln ping -o json` prints; the benchmark harness parses them. */
export interface PingSummary {
  session: string;
  tasks: number;
  succeeded: number;
  failed: number;
  /** First submission to last completion (session creation excluded, as in flmping). */
  durationMs: number;
  tasksPerSecond: number;
  /** Per task, submission to completion. */
  latencyMs: { p50: number; p99: number };
}

export interface PingHooks {
  onSessionCreated?(sessionId: string, elapsedMs: number): void;
  onTaskDone?(failed: boolean): void;
}

export interface PingResult {
  summary: PingSummary;
  /** Present when `collectTasks` was set. */
  tasks?: flame.Task[];
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

/** Builds the summary from per-task latencies and the wall-clock duration. */
export function summarize(
  session: string,
  tasks: number,
  failed: number,
  durationMs: number,
  latencies: readonly number[],
): PingSummary {
  return {
    session,
    tasks,
    succeeded: tasks - failed,
    failed,
    durationMs: round(durationMs, 1),
    tasksPerSecond: durationMs > 0 ? round((tasks / durationMs) * 1000, 2) : 0,
    latencyMs: { p50: round(percentile(latencies, 50), 1), p99: round(percentile(latencies, 99), 1) },
  };
}

/**
 * Stops a wait that can no longer succeed: rejects with InterruptedError when `signal`
 * aborts, and with TimeoutError when `progress()` was not called for `stallMs`.
 */
class WaitGuard {
  private lastProgress = performance.now();
  private fail: (err: Error) => void = () => {};
  private readonly stopped = new Promise<never>((_, reject) => (this.fail = reject));

  constructor(
    private readonly sessionId: string,
    private readonly stallMs: number,
    private readonly signal: AbortSignal | undefined,
  ) {}

  progress(): void {
    this.lastProgress = performance.now();
  }

  async wait(work: Promise<unknown>): Promise<void> {
    const interrupt = () =>
      this.fail(new InterruptedError(`session ${this.sessionId} was closed, its remaining tasks cancelled`));
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

function pingInput(o: PingOptions): Uint8Array {
  const input: { durationMs?: number; memoryBytes?: number } = {};
  if (o.durationMs !== undefined) input.durationMs = o.durationMs;
  if (o.memoryBytes !== undefined) input.memoryBytes = o.memoryBytes;
  return new TextEncoder().encode(JSON.stringify(input));
}

/**
 * Creates a session, submits `tasks` ping tasks at once (the SDK batches them), waits for
 * all of them, and closes the session. Task failures are counted, not thrown; anything
 * else (e.g. the cluster going away) is thrown after every task settled.
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
    result = await submitAndWait(session, o, hooks);
  } catch (err) {
    // The session may be unreachable too; the first error is the one worth reporting.
    await session.close().catch(() => {});
    throw err;
  }
  await session.close();
  return result;
}

async function submitAndWait(session: Session, o: PingOptions, hooks: PingHooks): Promise<PingResult> {
  const input = pingInput(o);
  const latencies: number[] = [];
  let failed = 0;
  let unexpected: unknown;
  const guard = new WaitGuard(session.id, o.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS, o.signal);
  const start = performance.now();
  const settled = Array.from({ length: o.tasks }, () => {
    const submitted = performance.now();
    return session.run(input).then(
      () => {
        latencies.push(performance.now() - submitted);
        guard.progress();
        hooks.onTaskDone?.(false);
      },
      (err: unknown) => {
        if (!(err instanceof TaskFailedError)) {
          unexpected ??= err;
          return;
        }
        failed++;
        latencies.push(performance.now() - submitted);
        guard.progress();
        hooks.onTaskDone?.(true);
      },
    );
  });
  await guard.wait(Promise.all(settled));
  const durationMs = performance.now() - start;
  if (unexpected !== undefined) throw unexpected;

  const result: PingResult = { summary: summarize(session.id, o.tasks, failed, durationMs, latencies) };
  if (o.collectTasks) {
    result.tasks = [];
    for await (const task of session.listTasks()) result.tasks.push(task);
  }
  return result;
}
