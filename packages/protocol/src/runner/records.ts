import { decodeValue, encodeValue } from "../codec/index.js";
import { InvalidArgumentError } from "../errors.js";
import { isObjectRef, type ObjectRef } from "../objects/object-ref.js";

/**
 * What a Runner client and the `kiln-run` service say to each other, in three
 * records, each one value of Kiln's codec (so decoding never runs code):
 *
 * - a ServiceSpec is a session's common data: which export of which module,
 *   constructor arguments, options. The executor loads it at session enter;
 * - a CallRecord is a task's input: the method (null for a function) and arguments;
 * - an OutputRecord is a task's output: the result (inline, or an ObjectRef
 *   to it in the cache) or the error, and the call's captured stdout/stderr.
 *
 * Top-level arguments that are ObjectRefs are fetched by the executor and
 * passed as values. Values larger than INLINE_LIMIT once encoded travel
 * through the object cache as ObjectRefs instead of inside the task.
 */

/** The built-in application every Runner application is copied from. */
export const RUNNER_TEMPLATE = "kiln-run";
/** Set by kiln-run to the package URL of the application it serves, so a Runner opened inside a call can reuse it. */
export const RUNNER_PACKAGE_ENV = "KILN_RUNNER_PACKAGE_URL";

/** Carried by every record; a new layout gets a new tag. */
export const RUNNER_FORMAT = "kiln-run/1";

/** Encoded arguments and results up to this many bytes travel inside the task; larger ones through the cache. */
export const INLINE_LIMIT = 64 * 1024;

/** Bytes of stdout and of stderr kept per call; the rest is counted in `…Truncated`. */
export const OUTPUT_CAPTURE_LIMIT = 64 * 1024;

/**
 * What the export is. The Runner sends "auto": the executor looks at the
 * export (a class is instantiated once per executor, a function is called),
 * since the client knows the module only by its types, which are erased.
 * "function" or "class" make the executor refuse an export of the other kind.
 */
export type ServiceKind = "function" | "class" | "auto";

/** A session's common data. */
export interface ServiceSpec {
  format: typeof RUNNER_FORMAT;
  /** The module's path inside the project, POSIX separators, e.g. `src/pi.ts`. */
  module: string;
  /** The export's name (`default` for a default export). */
  export: string;
  kind: ServiceKind;
  /** Constructor arguments (classes only; empty for functions). */
  args: unknown[];
  /** Save the instance's state to the cache after each call and restore it before the next, on any executor. */
  stateful: boolean;
  /** npm package specs installed on the executor for this service, e.g. `lodash@4.17.21`. */
  dependencies: string[];
}

/** A task's input. */
export interface CallRecord {
  format: typeof RUNNER_FORMAT;
  type: "input";
  /** `<module>#<export>`, so a task's input reads on its own (getData, `kiln data`). */
  service: string;
  /** The method of a class instance; null for a function. */
  method: string | null;
  args: unknown[];
}

/** What a call printed, bounded by OUTPUT_CAPTURE_LIMIT per stream. */
export interface CapturedOutput {
  stdout: string;
  stderr: string;
  /** Bytes left out of `stdout` / `stderr` (0 when complete). */
  stdoutTruncated: number;
  stderrTruncated: number;
}

/** A task's output: a result or an error, and what the call printed. */
export interface OutputRecord extends CapturedOutput {
  format: typeof RUNNER_FORMAT;
  type: "output" | "error";
  /** The return value when type is "output" and it fits INLINE_LIMIT. */
  result?: unknown;
  /** Where the return value is when it did not fit. */
  resultRef?: ObjectRef;
  /** The thrown error (name, message, stack, cause, own properties) when type is "error". */
  error?: Error;
  /** Wall time of the call itself, excluding argument fetches. */
  durationMs: number;
  host: string;
  pid: number;
}

/** Cache keys the Runner uses; all under the application, so `deleteObjects("<app>/*")` removes everything. */
export const runnerKeys = {
  /** Prefix of a session's objects: large arguments (ids assigned by the cache), results, state. */
  session: (app: string, sessionId: string) => `${app}/${sessionId}`,
  /** A result too large to travel inline. */
  result: (app: string, sessionId: string, taskId: string) => `${app}/${sessionId}/task-${taskId}-result`,
  /** A stateful service's instance state. */
  state: (app: string, sessionId: string) => `${app}/${sessionId}/state`,
  /** Prefix of objects put with `runner.putObject`. */
  shared: (app: string) => `${app}/shared`,
};

function record(bytes: Uint8Array, what: string): Record<string, unknown> {
  const value = decodeValue(bytes);
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new InvalidArgumentError(what, `is not a Runner record (decoded to ${describe(value)})`);
  const rec = value as Record<string, unknown>;
  if (rec.format !== RUNNER_FORMAT)
    throw new InvalidArgumentError(`${what}.format`, `must be "${RUNNER_FORMAT}" (got ${describe(rec.format)})`);
  return rec;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "string" ? JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v) : typeof v;
}

function str(rec: Record<string, unknown>, what: string, field: string): string {
  const v = rec[field];
  if (typeof v !== "string")
    throw new InvalidArgumentError(`${what}.${field}`, `must be a string (got ${describe(v)})`);
  return v;
}

function arr(rec: Record<string, unknown>, what: string, field: string): unknown[] {
  const v = rec[field];
  if (!Array.isArray(v)) throw new InvalidArgumentError(`${what}.${field}`, `must be an array (got ${describe(v)})`);
  return v;
}

function num(rec: Record<string, unknown>, what: string, field: string): number {
  const v = rec[field];
  if (typeof v !== "number")
    throw new InvalidArgumentError(`${what}.${field}`, `must be a number (got ${describe(v)})`);
  return v;
}

/** @example const commonData = encodeServiceSpec({ format: RUNNER_FORMAT, module: "src/pi.ts", export: "estimate", kind: "function", args: [], stateful: false, dependencies: [] }); */
export function encodeServiceSpec(spec: ServiceSpec): Uint8Array {
  return encodeValue(spec, { path: "service" });
}

/** Throws CodecError for bytes that are not a value, InvalidArgumentError (naming the field) for a wrong shape. */
export function decodeServiceSpec(bytes: Uint8Array): ServiceSpec {
  const rec = record(bytes, "service");
  const kind = str(rec, "service", "kind");
  if (kind !== "function" && kind !== "class" && kind !== "auto")
    throw new InvalidArgumentError("service.kind", `must be "function", "class" or "auto" (got ${describe(kind)})`);
  const dependencies = arr(rec, "service", "dependencies");
  if (dependencies.some((d) => typeof d !== "string"))
    throw new InvalidArgumentError("service.dependencies", "must be an array of strings");
  return {
    format: RUNNER_FORMAT,
    module: str(rec, "service", "module"),
    export: str(rec, "service", "export"),
    kind,
    args: arr(rec, "service", "args"),
    stateful: rec.stateful === true,
    dependencies: dependencies as string[],
  };
}

/** @example const input = encodeCall({ format: RUNNER_FORMAT, type: "input", service: "src/pi.ts#estimate", method: null, args: [1e6] }); */
export function encodeCall(call: CallRecord): Uint8Array {
  return encodeValue(call, { path: "call" });
}

export function decodeCall(bytes: Uint8Array): CallRecord {
  const rec = record(bytes, "input");
  if (rec.type !== "input") throw new InvalidArgumentError("input.type", `must be "input" (got ${describe(rec.type)})`);
  const method = rec.method;
  if (method !== null && typeof method !== "string")
    throw new InvalidArgumentError("input.method", `must be a string or null (got ${describe(method)})`);
  return {
    format: RUNNER_FORMAT,
    type: "input",
    service: str(rec, "input", "service"),
    method,
    args: arr(rec, "input", "args"),
  };
}

export function encodeOutput(output: OutputRecord): Uint8Array {
  return encodeValue(output, { path: "output" });
}

export function decodeOutput(bytes: Uint8Array): OutputRecord {
  const rec = record(bytes, "output");
  const type = rec.type;
  if (type !== "output" && type !== "error")
    throw new InvalidArgumentError("output.type", `must be "output" or "error" (got ${describe(type)})`);
  if (rec.resultRef !== undefined && !isObjectRef(rec.resultRef))
    throw new InvalidArgumentError("output.resultRef", "must be an ObjectRef");
  if (type === "error" && !(rec.error instanceof Error))
    throw new InvalidArgumentError("output.error", 'must be an Error when type is "error"');
  const out: OutputRecord = {
    format: RUNNER_FORMAT,
    type,
    stdout: str(rec, "output", "stdout"),
    stderr: str(rec, "output", "stderr"),
    stdoutTruncated: num(rec, "output", "stdoutTruncated"),
    stderrTruncated: num(rec, "output", "stderrTruncated"),
    durationMs: num(rec, "output", "durationMs"),
    host: str(rec, "output", "host"),
    pid: num(rec, "output", "pid"),
  };
  if ("result" in rec) out.result = rec.result;
  if (isObjectRef(rec.resultRef)) out.resultRef = rec.resultRef;
  if (rec.error instanceof Error) out.error = rec.error;
  return out;
}

/**
 * An npm package spec such as `lodash@4.17.21` or `lodash@>=4 <5`; never an
 * npm option (a leading "-") or several lines, since it becomes one argument of npm.
 *
 * @example
 * checkDependencySpec("left-pad@^1.3.0", "dependencies[0]");
 */
export function checkDependencySpec(spec: unknown, field: string): string {
  if (typeof spec !== "string" || spec === "") throw new InvalidArgumentError(field, "must be an npm package spec");
  if (spec.startsWith("-") || /[\r\n\0]/.test(spec))
    throw new InvalidArgumentError(
      field,
      `"${spec}" must be one npm package spec (e.g. lodash@4.17.21), not an option`,
    );
  return spec;
}
