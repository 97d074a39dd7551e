import { TaskFailedError, type KilnClient, type Session, type SessionOptions } from "@kiln/sdk";
import type { flame } from "@kiln/sdk/proto";
import { performance } from "node:perf_hooks";
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
}

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

/** Settles Promise.all(`work`), or rejects with InterruptedError as soon as `signal` aborts. */
async function untilDoneOrAborted(
  work: Promise<unknown>[],
  signal: AbortSignal | undefined,
  sessionId: string,
): Promise<void> {
  if (!signal) {
    await Promise.all(work);
    return;
  }
  let stop = (): void => {};
  const aborted = new Promise<never>((_, reject) => {
    stop = () => reject(new InterruptedError(`session ${sessionId} was closed, its remaining tasks cancelled`));
    if (signal.aborted) stop();
    signal.addEventListener("abort", stop, { once: true });
  });
  try {
    await Promise.race([Promise.all(work), aborted]);
  } finally {
    signal.removeEventListener("abort", stop);
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
  const sessionOptions: SessionOptions = { application: o.application ?? "kiln-ping" };
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
  const start = performance.now();
  const settled = Array.from({ length: o.tasks }, () => {
    const submitted = performance.now();
    return session.run(input).then(
      () => {
        latencies.push(performance.now() - submitted);
        hooks.onTaskDone?.(false);
      },
      (err: unknown) => {
        if (!(err instanceof TaskFailedError)) {
          unexpected ??= err;
          return;
        }
        failed++;
        latencies.push(performance.now() - submitted);
        hooks.onTaskDone?.(true);
      },
    );
  });
  await untilDoneOrAborted(settled, o.signal, session.id);
  const durationMs = performance.now() - start;
  if (unexpected !== undefined) throw unexpected;

  const result: PingResult = { summary: summarize(session.id, o.tasks, failed, durationMs, latencies) };
  if (o.collectTasks) {
    result.tasks = [];
    for await (const task of session.listTasks()) result.tasks.push(task);
  }
  return result;
}
