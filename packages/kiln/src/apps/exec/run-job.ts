import type { ObjectCache } from "@kiln/sdk";
import {
  JOB_FORMAT,
  matchesPattern,
  type DeclaredOutput,
  type JobResult,
  type JobSpec,
  type OutputReport,
} from "@kiln/protocol/jobs";
import * as fsp from "node:fs/promises";
import { matchOutputs } from "../../outputs/match.js";
import { persistOutputs } from "../../outputs/persist.js";
import { newEntries, takeListing } from "../../outputs/snapshot.js";
import { jobArgv, jobEnvironment } from "./command-line.js";
import { runCommand, type CommandOutcome } from "./run-command.js";
import { createWorkDir, placeInputs } from "./work-dir.js";

/** Bytes of stdout and of stderr a job result keeps (the beginning; the rest is counted). */
export const JOB_CAPTURE_BYTES = 64 * 1024;
const MESSAGE_TAIL_LINES = 5;
const MESSAGE_TAIL_CHARS = 1000;
const ITEMS_IN_MESSAGE = 3;

/** One job to run, and where its files go. */
export interface JobTask {
  spec: JobSpec;
  /** The spec's outputs, validated by the executor itself. */
  declared: DeclaredOutput[];
  cache: ObjectCache;
  application: string;
  sessionId: string;
  taskId: string;
  signal: AbortSignal;
  /** Where the job's working directory is made. */
  parentDir: string;
}

/**
 * How a job ended: `done` with the result (and why the job failed, if it
 * did), or `cancelled` with its logs and nothing persisted.
 */
export type JobOutcome =
  { kind: "done"; result: JobResult; failure?: string } | { kind: "cancelled"; result: JobResult };

const NOTHING_COLLECTED: OutputReport = { outputs: [], unmatchedPatterns: [], unmatchedOutputs: [], refused: [] };

/**
 * Runs one job: a fresh working directory with the inputs placed, a listing
 * before, the command (own process group, timeout), a listing after, and
 * the new files matched and persisted by the shared output code. Outputs are
 * persisted whatever the exit code (a failed job's partial outputs help
 * debugging), but never for a cancelled job. The working directory is
 * removed once the outcome is known; an unexpected error keeps it (until
 * the executor unbinds) for a look.
 *
 * @example
 * const outcome = await runJob({ spec, declared: validateJobSpec(spec), cache, application: "kiln-exec",
 *   sessionId, taskId, signal, parentDir: os.tmpdir() });
 */
export async function runJob(task: JobTask): Promise<JobOutcome> {
  const { spec, sessionId, taskId } = task;
  const dir = await createWorkDir(task.parentDir, taskId);
  let finished = false;
  try {
    await placeInputs(dir.root, spec.inputs, task.cache);
    const env = jobEnvironment(spec, dir, { sessionId, taskId });
    const argv = await jobArgv(spec, dir, env);
    const before = await takeListing(dir.root);
    const run = await runCommand({
      argv,
      cwd: dir.root,
      env,
      timeoutMs: spec.timeoutMs,
      signal: task.signal,
      captureBytes: JOB_CAPTURE_BYTES,
    });
    if (run.cancelled || task.signal.aborted) {
      finished = true;
      return { kind: "cancelled", result: jobResult(run, NOTHING_COLLECTED) };
    }
    const { files, refused } = newEntries(before, await takeListing(dir.root));
    const report = await persistOutputs(
      { cache: task.cache, application: task.application, sessionId, taskId, workDir: dir.root, levels: spec.levels },
      matchOutputs(files, task.declared),
      refused,
    );
    finished = true;
    const result = jobResult(run, report);
    const failure = failureMessage(run, report, task.declared);
    return failure === undefined ? { kind: "done", result } : { kind: "done", result, failure };
  } finally {
    if (finished) await removeWorkDir(dir.root);
  }
}

/** Best effort: a directory the command made unremovable (no write permission) must not fail a finished job. */
async function removeWorkDir(root: string): Promise<void> {
  try {
    await fsp.rm(root, { recursive: true, force: true });
  } catch (err) {
    process.stderr.write(`kiln-exec: could not remove the working directory ${root}: ${String(err)}\n`);
  }
}

function jobResult(run: CommandOutcome, report: OutputReport): JobResult {
  return {
    format: JOB_FORMAT,
    exitCode: run.exitCode,
    signal: run.signal,
    timedOut: run.timedOut,
    durationMs: run.durationMs,
    stdout: run.stdout.text(),
    stderr: run.stderr.text(),
    stdoutTruncated: run.stdout.truncated,
    stderrTruncated: run.stderr.truncated,
    report,
  };
}

/**
 * Why the job failed, in one message (the task's failure message), or
 * undefined when it succeeded. The command's own failure comes first; then
 * what collecting found: patterns no file matched (with the undeclared new
 * files as hints) and declared outputs that were refused (a link, over the
 * level's limit…). Undeclared files alone never fail a job.
 */
export function failureMessage(
  run: CommandOutcome,
  report: OutputReport,
  declared: readonly DeclaredOutput[],
): string | undefined {
  const tail = run.stderr.tail(MESSAGE_TAIL_LINES).slice(-MESSAGE_TAIL_CHARS);
  const withTail = (head: string) => (tail ? `${head}: ${tail}` : head);
  if (run.timedOut)
    return withTail(`timed out after ${(run.durationMs / 1000).toFixed(1)} s; its process group was killed`);
  if (run.exitCode === null) return withTail(`killed by ${run.signal ?? "a signal"}`);
  if (run.exitCode !== 0) return withTail(`exit code ${run.exitCode}`);
  const problems: string[] = [];
  if (report.unmatchedPatterns.length > 0) {
    const patterns = report.unmatchedPatterns.map((p) => `${JSON.stringify(p.pattern)} (${p.level}.${p.name})`);
    problems.push(`no file matched ${patterns.length === 1 ? "pattern" : "patterns"} ${patterns.join(", ")}`);
    const hints = report.unmatchedOutputs.map((u) => (u.hint ? `${u.path} (${u.hint})` : u.path));
    if (hints.length > 0) problems.push(`new files no pattern matched: ${listSome(hints)}`);
  }
  const refused = report.refused.filter((r) => declared.some((d) => matchesPattern(d.pattern, r.path)));
  if (refused.length > 0)
    problems.push(`declared outputs refused: ${listSome(refused.map((r) => `${r.path} (${r.reason})`))}`);
  return problems.length === 0 ? undefined : problems.join("; ");
}

function listSome(items: readonly string[]): string {
  const shown = items.slice(0, ITEMS_IN_MESSAGE).join(", ");
  return items.length > ITEMS_IN_MESSAGE ? `${shown} and ${items.length - ITEMS_IN_MESSAGE} more` : shown;
}
