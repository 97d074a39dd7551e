import {
  JOB_APPLICATION,
  decodeJobSpec,
  encodeJobResult,
  jobKeys,
  validateJobSpec,
  type JobResult,
} from "@kiln/protocol/jobs";
import { ObjectCache } from "@kiln/sdk";
import { TaskFailure, type ServiceHandlers, type SessionContextInfo, type TaskContextInfo } from "@kiln/service";
import * as os from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { runJob } from "./run-job.js";

/** How long leaving a session waits for cancelled jobs to finish stopping and saving their logs. */
const LEAVE_WAIT_MS = 5_000;

/**
 * kiln-exec: each task is a job (a JobSpec), run by runJob. The task's
 * output is the JobResult; a failed job (non-zero exit, timeout, unmatched
 * pattern, refused output) fails the task with a one-line reason and the
 * JobResult as its output. A cancelled job persists nothing; its JobResult
 * (the logs) is kept in the cache under jobKeys.log, since a cancelled task
 * keeps no output.
 *
 * @example
 * await serve(new ExecService().handlers());
 */
export class ExecService {
  /** Outputs are keyed under it: the built-in name, or a copy's own name (from session enter). */
  private application = JOB_APPLICATION;
  private cache: ObjectCache | undefined;
  private readonly running = new Set<Promise<unknown>>();

  handlers(): ServiceHandlers {
    return {
      onSessionEnter: (ctx) => this.enter(ctx),
      onTaskInvoke: (task) => this.track(this.invoke(task)),
      onSessionLeave: () => this.leave(),
    };
  }

  private objects(): ObjectCache {
    this.cache ??= ObjectCache.fromConfig();
    return this.cache;
  }

  private enter(ctx: SessionContextInfo): void {
    this.application = ctx.application.name;
  }

  private async leave(): Promise<void> {
    await Promise.race([Promise.allSettled(this.running), sleep(LEAVE_WAIT_MS)]);
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.running.add(work);
    void work.finally(() => this.running.delete(work)).catch(() => undefined);
    return work;
  }

  private async invoke(task: TaskContextInfo): Promise<Uint8Array> {
    const spec = decodeJobSpec(task.input ?? new Uint8Array(0));
    const declared = validateJobSpec(spec);
    const outcome = await runJob({
      spec,
      declared,
      cache: this.objects(),
      application: this.application,
      sessionId: task.sessionId,
      taskId: task.taskId,
      signal: task.signal,
      parentDir: os.tmpdir(),
    });
    if (outcome.kind === "cancelled") {
      await this.keepLog(task, outcome.result);
      throw new TaskFailure("cancelled", encodeJobResult(outcome.result));
    }
    const output = encodeJobResult(outcome.result);
    if (outcome.failure !== undefined) throw new TaskFailure(outcome.failure, output);
    return output;
  }

  /** A cancelled job's logs go to the cache: the task's own output is dropped with it. */
  private async keepLog(task: TaskContextInfo, result: JobResult): Promise<void> {
    const key = jobKeys.log(this.application, task.sessionId, task.taskId);
    try {
      await this.objects().putObject(key, result);
    } catch (err) {
      process.stderr.write(
        `kiln-exec: could not keep the logs of cancelled task ${task.taskId} at ${key}: ${String(err)}\n`,
      );
    }
  }
}
