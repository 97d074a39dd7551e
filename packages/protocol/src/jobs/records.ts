import { decodeValue, encodeValue } from "../codec/index.js";
import { InvalidArgumentError } from "../errors.js";
import type { ObjectRef } from "../objects/object-ref.js";

/**
 * What a job client and the `kiln-exec` service say to each other: a JobSpec
 * is a task's input, a JobResult its output (also sent with a failure), both
 * values of Kiln's codec. Output files live in the object cache under the
 * task's keys; the manifest, written last, marks them complete.
 */

/**
 * Unmatched files, and refused entries, listed in a report (each list): a
 * command that writes 100,000 stray files or FIFOs must not make a result
 * too large to deliver; the rest are counted.
 */
export const MAX_REPORTED_ENTRIES = 1000;

/** Carried by both records; a new layout gets a new tag. */
export const JOB_FORMAT = "kiln-exec/1";

/**
 * The built-in application that runs jobs; a copy registered under another name runs them the same way.
 *
 * @example
 * const session = await client.createSession({ application: JOB_APPLICATION });
 */
export const JOB_APPLICATION = "kiln-exec";

/** Interpreters a script may name; each must exist on the executor's PATH. */
export const SCRIPT_INTERPRETERS = ["sh", "bash", "node", "python"] as const;
export type ScriptInterpreter = (typeof SCRIPT_INTERPRETERS)[number];

/** Declared outputs: `{ <level>: { <name>: <pattern> } }`, e.g. `{ moderately_sensitive: { summary: "output/summary.txt" } }`. */
export type OutputSpec = Record<string, Record<string, string>>;

/** One privacy level's rules. Levels are listed most restrictive first. */
export interface OutputLevel {
  name: string;
  /** Largest file accepted at this level, in bytes; larger matched files are refused. */
  maxFileBytes: number;
  /** Allowed file extensions with the dot (`.csv`); empty means any. */
  extensions: string[];
}

/** A file placed in the job's working directory before the command runs. */
export interface JobInput {
  /** Relative POSIX path inside the working directory. */
  path: string;
  /** The bytes inline (small files), or … */
  data?: Uint8Array;
  /** … an object in the cache holding them (large files). */
  ref?: ObjectRef;
  /** Unix mode, default 0o644. */
  mode?: number;
}

/** A task's input. Exactly one of `command` and `script`. */
export interface JobSpec {
  format: typeof JOB_FORMAT;
  /** argv: the program and its arguments (no shell). */
  command?: string[];
  script?: { interpreter: ScriptInterpreter; source: string };
  inputs: JobInput[];
  env: Record<string, string>;
  /** The command is killed (its whole process group) after this long. */
  timeoutMs: number;
  outputs: OutputSpec;
  /** The levels in force, most restrictive first (the client sends the defaults unless told otherwise). */
  levels: OutputLevel[];
}

/** One persisted output file. */
export interface PersistedOutput {
  /** Path relative to the working directory. */
  path: string;
  /** The declared output (pattern name) and level it was persisted under: the most restrictive that matched. */
  name: string;
  level: string;
  pattern: string;
  size: number;
  sha256: string;
  ref: ObjectRef;
  /** Other declared outputs whose patterns also matched this file (less or equally restrictive). */
  alsoMatched: { name: string; level: string; pattern: string }[];
}

/** What collecting a job's outputs found. */
export interface OutputReport {
  outputs: PersistedOutput[];
  /** Declared outputs that matched no file: the job fails. */
  unmatchedPatterns: { name: string; level: string; pattern: string }[];
  /** New files no pattern matched: a hint, not a failure. `hint` names the nearest pattern. At most MAX_REPORTED_ENTRIES. */
  unmatchedOutputs: { path: string; hint?: string }[];
  /** How many more unmatched files there were, beyond those listed (absent when none). */
  unmatchedOutputsOmitted?: number;
  /** New entries that were not collected, and why (a symlink, a FIFO, a device, over the level's size limit…). At most MAX_REPORTED_ENTRIES. */
  refused: { path: string; reason: string }[];
  /** How many more refused entries there were, beyond those listed (absent when none). */
  refusedOmitted?: number;
  /** The manifest object, written after every file: present only when the outputs are complete. */
  manifest?: ObjectRef;
}

/** A task's output. */
export interface JobResult {
  format: typeof JOB_FORMAT;
  /** The command's exit code; null when it was killed by a signal. */
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
  stdout: string;
  stderr: string;
  /** Bytes left out of stdout / stderr (their beginnings are kept). */
  stdoutTruncated: number;
  stderrTruncated: number;
  report: OutputReport;
}

/** Cache keys of a job's files, under its session so deleting the session's objects removes them. */
export const jobKeys = {
  /** One output file; the id is derived from its path so persisting twice writes the same keys. */
  output: (app: string, sessionId: string, taskId: string, pathSha256: string) =>
    `${app}/${sessionId}/task-${taskId}-out-${pathSha256.slice(0, 32)}`,
  /** The manifest: written last, so its presence means every output is there. */
  manifest: (app: string, sessionId: string, taskId: string) => `${app}/${sessionId}/task-${taskId}-manifest`,
  /** The JobResult (its logs) of a job cancelled while it ran: a cancelled task keeps no output of its own. */
  log: (app: string, sessionId: string, taskId: string) => `${app}/${sessionId}/task-${taskId}-log`,
  /** An input too large to travel inside the task. */
  inputPrefix: (app: string, sessionId: string) => `${app}/${sessionId}`,
};

function record(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new InvalidArgumentError(what, "is not a job record");
  const rec = value as Record<string, unknown>;
  if (rec.format !== JOB_FORMAT) throw new InvalidArgumentError(`${what}.format`, `must be "${JOB_FORMAT}"`);
  return rec;
}

/** @example const input = encodeJobSpec({ format: JOB_FORMAT, command: ["echo", "hi"], inputs: [], env: {}, timeoutMs: 60_000, outputs: {}, levels: DEFAULT_LEVELS }); */
export function encodeJobSpec(spec: JobSpec): Uint8Array {
  return encodeValue(spec, { path: "job" });
}

/** Checks that the bytes are a job record of this format; validateJobSpec (job-rules.ts) checks the rest. */
export function decodeJobSpec(bytes: Uint8Array): JobSpec {
  return record(decodeValue(bytes), "job") as unknown as JobSpec;
}

export function encodeJobResult(result: JobResult): Uint8Array {
  return encodeValue(result, { path: "result" });
}

export function decodeJobResult(bytes: Uint8Array): JobResult {
  return jobResultOf(decodeValue(bytes));
}

/** A JobResult already decoded (read from the cache with getObject), checked as decodeJobResult checks one. */
export function jobResultOf(value: unknown): JobResult {
  const rec = record(value, "result");
  if (typeof rec.report !== "object" || rec.report === null)
    throw new InvalidArgumentError("result.report", "must be an object");
  return rec as unknown as JobResult;
}
