import type { Stats } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Session } from "../client/session.js";
import { outputOf, type TaskUpdate } from "../client/task-update.js";
import {
  ErrorCode,
  FailedPreconditionError,
  InvalidArgumentError,
  KilnError,
  TaskFailedError,
  isNotFound,
} from "@kiln/protocol";
import type { ObjectCache } from "../objects/cache-client.js";
import { defaultObjectCache } from "../objects/objects.js";
import { flame } from "@kiln/protocol/proto";
import {
  validateJobSpec,
  DEFAULT_LEVELS,
  validateLevels,
  validateRelativePath,
  decodeJobResult,
  jobResultOf,
  decodeJobSpec,
  encodeJobSpec,
  JOB_FORMAT,
  jobKeys,
  type JobInput,
  type JobResult,
  type JobSpec,
  type OutputLevel,
  type OutputReport,
  type OutputSpec,
  type PersistedOutput,
  type ScriptInterpreter,
} from "@kiln/protocol/jobs";

/** One file placed in the job's working directory before its command runs. */
export interface JobInputFile {
  /** Where it goes: a relative POSIX path inside the working directory. */
  path: string;
  /** A local file to send … */
  file?: string;
  /** … or the bytes themselves (a string is sent as UTF-8). */
  data?: Uint8Array | string;
  /** Unix permission bits; default: the local file's, else 0o644. */
  mode?: number;
}

/** A job: a command (or a script), its inputs, env, timeout and declared outputs. */
export interface JobOptions {
  /** The program and its arguments, run without a shell. Exactly one of `command` and `script`. */
  command?: string[];
  /** Source run by an interpreter on the executor (sh, bash, node, python). */
  script?: { interpreter: ScriptInterpreter; source: string };
  /**
   * Files to place in the working directory. A string is a local file, placed
   * at the same relative path (`data/in.csv` → `data/in.csv`), or under its
   * base name when the path is absolute or leaves the current directory.
   */
  inputs?: (string | JobInputFile)[];
  env?: Record<string, string>;
  /** The command's process group is killed after this long. Default one hour. */
  timeoutMs?: number;
  /** `{ <level>: { <name>: <pattern> } }`, e.g. `{ moderately_sensitive: { summary: "out/summary.txt" } }`. */
  outputs?: OutputSpec;
  /** The privacy levels in force, most restrictive first. Default DEFAULT_LEVELS. */
  levels?: OutputLevel[];
  /** Where large inputs go. Default: the configured object cache (KILN_CACHE_ENDPOINT…), else the advertised one. */
  cache?: ObjectCache;
  /** Aborting cancels the job: its command is killed and nothing is persisted. */
  signal?: AbortSignal;
  /** Called once the job's task exists, with its id (what `kiln outputs <session> <task>` takes). */
  onTaskId?(taskId: string): void;
}

/** A job's task failed and the executor said why: `result` holds the exit code, logs and output report. */
export class JobFailedError extends TaskFailedError {
  readonly result: JobResult;
  constructor(sessionId: string, taskId: string, message: string, result: JobResult) {
    super(sessionId, taskId, message);
    this.result = result;
  }
}

export const DEFAULT_JOB_TIMEOUT_MS = 3600 * 1000;
/** Files up to this size travel inside the task; larger ones through the object cache. */
const INLINE_FILE_BYTES = 256 * 1024;
/** All inline files together stay well under the control plane's task size limit (16 MiB by default). */
const INLINE_TOTAL_BYTES = 4 * 1024 * 1024;

/** Where a local file given by its path lands in the working directory. */
function defaultInputPath(file: string): string {
  const relative = path.posix.normalize(file.split(path.sep).join("/"));
  const leaves = path.isAbsolute(file) || relative === ".." || relative.startsWith("../");
  return leaves ? path.basename(file) : relative;
}

function toInputFile(input: string | JobInputFile, i: number): JobInputFile {
  if (typeof input === "string") return { path: defaultInputPath(input), file: input };
  if (typeof input !== "object" || input === null)
    throw new InvalidArgumentError(`inputs[${i}]`, "must be a local file path or { path, file | data, mode? }");
  if ((input.file === undefined) === (input.data === undefined))
    throw new InvalidArgumentError(`inputs[${i}]`, "needs exactly one of file (a local path) and data");
  return input;
}

/** The job's spec without input bytes yet, validated, and its input files. */
function plan(job: JobOptions): { spec: JobSpec; files: JobInputFile[] } {
  const files = (job.inputs ?? []).map(toInputFile);
  const spec: JobSpec = {
    format: JOB_FORMAT,
    ...(job.command !== undefined ? { command: job.command } : {}),
    ...(job.script !== undefined ? { script: job.script } : {}),
    inputs: files.map((f) => ({ path: f.path, ...(f.mode !== undefined ? { mode: f.mode } : {}) })),
    env: job.env ?? {},
    timeoutMs: job.timeoutMs ?? DEFAULT_JOB_TIMEOUT_MS,
    outputs: job.outputs ?? {},
    levels: job.levels ?? DEFAULT_LEVELS,
  };
  validateJobSpec(spec);
  return { spec, files };
}

/**
 * Checks a job without running it or reading its files: the command or
 * script, input paths, env names, timeout, levels and declared outputs
 * (the same rules the executor applies). Throws InvalidArgumentError naming
 * the field and the rule, e.g. `job.outputs.highly_sensitive.rows`.
 *
 * @example
 * validateJob({ command: ["true"], outputs: { highly_sensitive: { rows: "/abs/rows.csv" } } }); // throws
 */
export function validateJob(job: JobOptions): void {
  plan(job);
}

/**
 * The JobSpec of `job` with each input's bytes inline or in the cache
 * (under the session, so deleting the session's objects removes them).
 * Everything is validated before any byte is read or uploaded.
 */
async function buildSpec(session: Session, job: JobOptions): Promise<JobSpec> {
  const { spec, files } = plan(job);
  let inlineBudget = INLINE_TOTAL_BYTES;
  let application: string | undefined;
  const prefix = async () =>
    jobKeys.inputPrefix((application ??= (await session.info()).spec?.application ?? ""), session.id);
  spec.inputs = [];
  for (const [i, f] of files.entries()) {
    const input: JobInput = { path: f.path };
    let bytes: Uint8Array | undefined;
    let mode = f.mode;
    if (f.data !== undefined) bytes = typeof f.data === "string" ? new TextEncoder().encode(f.data) : f.data;
    else {
      const st = await localFile(`inputs[${i}].file`, f.file!);
      mode ??= st.mode & 0o777;
      if (st.size <= INLINE_FILE_BYTES && st.size <= inlineBudget) bytes = await fs.readFile(f.file!);
      else input.ref = await (job.cache ?? (await defaultObjectCache())).uploadObject(await prefix(), f.file!);
    }
    if (bytes && bytes.byteLength <= Math.min(INLINE_FILE_BYTES, inlineBudget)) {
      input.data = bytes;
      inlineBudget -= bytes.byteLength;
    } else if (bytes) input.ref = await (job.cache ?? (await defaultObjectCache())).uploadObject(await prefix(), bytes);
    if (mode !== undefined) input.mode = mode;
    spec.inputs.push(input);
  }
  return spec;
}

/** The stat of a local input file; a missing or unreadable one is the caller's mistake, named by `field`. */
async function localFile(field: string, file: string): Promise<Stats> {
  let st: Stats;
  try {
    st = await fs.stat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InvalidArgumentError(field, `cannot read ${JSON.stringify(file)} (${code ?? String(err)})`);
  }
  if (!st.isFile()) throw new InvalidArgumentError(field, `${JSON.stringify(file)} is not a regular file`);
  return st;
}

/** The JobResult a failed task carries, if it carries one. */
function failedResult(u: TaskUpdate): JobResult | undefined {
  if (u.state !== flame.TaskState.Failed || !u.output || u.output.byteLength === 0) return undefined;
  try {
    return decodeJobResult(u.output);
  } catch {
    return undefined;
  }
}

/**
 * Runs one job as a task of `session` (a session of kiln-exec, or of an
 * application copied from it) and resolves with its result once it
 * succeeds: exit code, logs (bounded), duration and the output report.
 * Declared outputs are checked before anything is sent (InvalidArgumentError
 * naming `outputs.<level>.<name>`); local input files travel inside the task
 * when small, through the object cache when large. A job that fails (non-zero
 * exit, timeout, a pattern no file matched, a declared output refused)
 * rejects with JobFailedError carrying the JobResult; a task that ends
 * without one (cancelled, executor lost) rejects with TaskFailedError.
 *
 * @example
 * const session = await client.createSession({ application: "kiln-exec" });
 * const result = await runJob(session, {
 *   command: ["sh", "-c", "mkdir -p out && wc -l < data.csv > out/count.txt"],
 *   inputs: ["data.csv"],
 *   outputs: { moderately_sensitive: { count: "out/count.txt" } },
 * });
 * await fetchOutputs(result.report, "./results");
 */
export async function runJob(session: Session, job: JobOptions): Promise<JobResult> {
  const spec = await buildSpec(session, job);
  const signal = job.signal;
  if (signal?.aborted)
    throw new KilnError(ErrorCode.Cancelled, `the job was cancelled before it was submitted to ${session.id}`);
  let taskId: string | undefined;
  const cancel = () => {
    if (taskId !== undefined) void session.cancel([taskId]).catch(() => undefined);
  };
  signal?.addEventListener("abort", cancel, { once: true });
  try {
    const done = await session.invoke(encodeJobSpec(spec), (u) => {
      if (taskId !== undefined) return;
      taskId = u.taskId;
      job.onTaskId?.(u.taskId);
      if (signal?.aborted) cancel();
    });
    if (done.state === flame.TaskState.Succeed) return decodeJobResult(done.output ?? new Uint8Array(0));
    const result = failedResult(done);
    if (result) throw new JobFailedError(done.sessionId, done.taskId, done.message ?? "failed", result);
    outputOf(done);
    throw new KilnError(ErrorCode.Internal, `task ${done.sessionId}/${done.taskId} is not finished`);
  } finally {
    signal?.removeEventListener("abort", cancel);
  }
}

/** What a job task left: its state, and its JobResult when there is one. */
export interface JobTaskResult {
  state: flame.TaskState;
  /** The job as submitted (its command, inputs, declared outputs and levels). */
  spec?: JobSpec;
  /** The task's output, or for a job cancelled while it ran the logs its executor kept. */
  result?: JobResult;
  /** Why the task failed or was cancelled. */
  message?: string;
}

/**
 * The result of a job task that has ended (or is still running: then no
 * result). For a job cancelled while it ran, the JobResult holds its logs,
 * read from the cache (its executor keeps them there); nothing was persisted.
 *
 * @example
 * const { state, result } = await getJobResult(session, "1");
 * if (result) console.log(result.exitCode, result.report.outputs.length);
 */
export async function getJobResult(
  session: Session,
  taskId: string,
  options: { cache?: ObjectCache } = {},
): Promise<JobTaskResult> {
  const task = await session.getTask(taskId);
  const state = task.status?.state ?? flame.TaskState.Pending;
  const message = state === flame.TaskState.Succeed ? undefined : task.status?.events.at(-1)?.message;
  const input = task.spec?.input;
  const found: JobTaskResult = {
    state,
    ...(input && input.byteLength > 0 ? { spec: decodeJobSpec(input) } : {}),
    ...(message ? { message } : {}),
  };
  const output = task.spec?.output;
  if (output && output.byteLength > 0) return { ...found, result: decodeJobResult(output) };
  if (state !== flame.TaskState.Cancelled) return found;
  const application = (await session.info()).spec?.application ?? "";
  const cache = options.cache ?? (await defaultObjectCache());
  try {
    return {
      ...found,
      result: jobResultOf(await cache.getObject(jobKeys.log(application, session.id, taskId))),
    };
  } catch (err) {
    if (isNotFound(err)) return found;
    throw err;
  }
}

/**
 * The outputs someone cleared for `level` may see: those kept at it or at a
 * less restrictive level (all of them without a level). Throws
 * InvalidArgumentError for a level not among `levels`.
 *
 * @example
 * outputsForLevel(report.outputs, "moderately_sensitive") // moderately_ and minimally_sensitive files
 */
export function outputsForLevel(
  outputs: readonly PersistedOutput[],
  level?: string,
  levels: OutputLevel[] = DEFAULT_LEVELS,
): PersistedOutput[] {
  if (level === undefined) return [...outputs];
  validateLevels(levels);
  const lowest = levels.findIndex((l) => l.name === level);
  if (lowest < 0)
    throw new InvalidArgumentError("level", `"${level}" is not one of ${levels.map((l) => l.name).join(", ")}`);
  return outputs.filter((o) => levels.findIndex((l) => l.name === o.level) >= lowest);
}

/** Which levels' files `fetchOutputs` takes. */
export interface FetchOutputsOptions {
  /** Only files at this level or a less restrictive one (whoever may read a level may read those below it). Default: all. */
  level?: string;
  /** The levels the job ran with, most restrictive first. Default DEFAULT_LEVELS. */
  levels?: OutputLevel[];
  cache?: ObjectCache;
}

/**
 * Downloads a job's persisted outputs into `dir`, each at `dir/<path>`.
 * Only complete outputs are fetched: the manifest must exist, and the list
 * comes from it. A path that would leave `dir` (through `..` or a link
 * already in `dir`) is refused; each file is checked against its sha256.
 * Resolves with the outputs written.
 *
 * @example
 * const fetched = await fetchOutputs(result.report, "./results", { level: "moderately_sensitive" });
 */
export async function fetchOutputs(
  report: OutputReport,
  dir: string,
  options: FetchOutputsOptions = {},
): Promise<PersistedOutput[]> {
  if (!report.manifest)
    throw new FailedPreconditionError(
      "the job's outputs were not persisted completely (no manifest): nothing to fetch",
    );
  const cache = options.cache ?? (await defaultObjectCache());
  let manifest: OutputReport;
  try {
    manifest = (await cache.getObject(report.manifest)) as OutputReport;
  } catch (err) {
    if (isNotFound(err))
      throw new FailedPreconditionError(`the job's manifest ${report.manifest.key} is gone: nothing to fetch`);
    throw err;
  }
  if (!Array.isArray(manifest?.outputs))
    throw new FailedPreconditionError(`${report.manifest.key} is not a job manifest`);
  const wanted = outputsForLevel(manifest.outputs, options.level, options.levels);
  await fs.mkdir(dir, { recursive: true });
  const root = await fs.realpath(dir);
  for (const [i, output] of wanted.entries()) {
    const target = await safeTarget(root, validateRelativePath(`outputs[${i}].path`, output.path));
    // Only the content the manifest names: an output replaced in the cache since is refused, not fetched.
    await cache.downloadObject(output.ref, target, { sha256: output.sha256 });
  }
  return wanted;
}

/** `root/<rel>` after making its directories, refusing any that is, or passes through, a link out of `root`. */
async function safeTarget(root: string, rel: string): Promise<string> {
  const parts = rel.split("/");
  const parent = path.join(root, ...parts.slice(0, -1));
  await fs.mkdir(parent, { recursive: true });
  const real = await fs.realpath(parent);
  if (real !== root && !real.startsWith(root + path.sep))
    throw new InvalidArgumentError("path", `"${rel}" would be written outside ${root} (through a link)`);
  const target = path.join(real, parts.at(-1)!);
  const existing = await fs.lstat(target).catch(() => undefined);
  if (existing && !existing.isFile())
    throw new InvalidArgumentError("path", `"${rel}" exists in ${root} and is not a regular file; not replacing it`);
  return target;
}
