import type { Session } from "../client/session.js";
import { outputOf, type TaskUpdate } from "../client/task-update.js";
import { flame } from "@kiln/protocol/proto";
import { checkArgs, resolveArgs, type ArgSlot } from "./call-args.js";
import { ObjectFuture, type CallOutcome, type FutureContext } from "./object-future.js";
import {
  decodeOutput,
  encodeCall,
  INLINE_LIMIT,
  RUNNER_FORMAT,
  runnerKeys,
  type OutputRecord,
} from "@kiln/protocol/runner";

/** One service: the session its calls go to, and what its tasks say they call. */
export interface ServiceBinding extends FutureContext {
  session: Session;
  /** `<module>#<export>`, written into every CallRecord. */
  service: string;
}

/** A remote throw as the client sees it: the remote error (name, message, stack, own properties) plus where it ran. */
export interface RemoteError extends Error {
  taskId: string;
  sessionId: string;
}

/**
 * Starts one remote call and returns its future at once. Arguments are
 * checked synchronously, so a value the codec refuses throws here, before
 * anything is sent.
 *
 * @example
 * const future = callRemote(binding, null, [1, 2]); // a function service
 * const other = callRemote(binding, "add", [5]);     // a method of a class service
 */
export function callRemote(
  binding: ServiceBinding,
  method: string | null,
  args: readonly unknown[],
): ObjectFuture<unknown> {
  const input = smallCall(binding, method, args);
  const slots = input ? undefined : checkArgs(args, "args");
  return new ObjectFuture(binding, (onTaskId) =>
    run(binding, method, input, slots, onTaskId).catch((err: unknown): CallOutcome => ({
      ok: false,
      error: asError(err),
    })),
  );
}

/**
 * The encoded CallRecord when it can go as it is (no futures, small), so the
 * common call is encoded once; undefined when arguments need the slow path.
 * A value the codec refuses throws, naming the argument.
 */
function smallCall(binding: ServiceBinding, method: string | null, args: readonly unknown[]): Uint8Array | undefined {
  if (args.some((a) => a instanceof ObjectFuture)) return undefined;
  let input: Uint8Array;
  try {
    input = encodeCall({ format: RUNNER_FORMAT, type: "input", service: binding.service, method, args: [...args] });
  } catch (err) {
    checkArgs(args, "args"); // throws the same refusal, named after the argument rather than the record
    throw err;
  }
  return input.byteLength <= INLINE_LIMIT ? input : undefined;
}

async function run(
  binding: ServiceBinding,
  method: string | null,
  small: Uint8Array | undefined,
  slots: ArgSlot[] | undefined,
  onTaskId: (taskId: string) => void,
): Promise<CallOutcome> {
  let input = small;
  if (!input) {
    const args = await resolveArgs(slots ?? [], (encoded) =>
      binding.cache.putEncoded(runnerKeys.session(binding.application, binding.sessionId), encoded),
    );
    input = encodeCall({ format: RUNNER_FORMAT, type: "input", service: binding.service, method, args });
  }
  return outcomeOf(await binding.session.invoke(input, (u) => onTaskId(u.taskId)));
}

/** A finished task as a call's outcome: its record, the remote error, or TaskFailedError when nothing ran. */
function outcomeOf(u: TaskUpdate): CallOutcome {
  if (u.state === flame.TaskState.Succeed) {
    const record = decodeOutput(u.output ?? new Uint8Array(0));
    return record.type === "error" ? { ok: false, record, error: remoteError(record, u) } : { ok: true, record };
  }
  const record = failureRecord(u);
  if (record) return { ok: false, record, error: remoteError(record, u) };
  outputOf(u); // throws TaskFailedError: the task failed or was cancelled without a remote error
  throw new Error(`task ${u.sessionId}/${u.taskId} is not finished`);
}

/** The error record a failed task carries, if the service sent one. */
function failureRecord(u: TaskUpdate): OutputRecord | undefined {
  if (u.state !== flame.TaskState.Failed || !u.output || u.output.byteLength === 0) return undefined;
  try {
    const record = decodeOutput(u.output);
    return record.type === "error" ? record : undefined;
  } catch {
    return undefined;
  }
}

function remoteError(record: OutputRecord, u: TaskUpdate): RemoteError {
  const error = record.error ?? new Error("the remote call failed without an error");
  return Object.assign(error, { taskId: u.taskId, sessionId: u.sessionId });
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

/**
 * The object `runner.service` returns: callable (a function service) and
 * with a remote method for every other property name (a class service).
 * `then` is left undefined so the proxy is not mistaken for a promise, and
 * properties every function has stay the proxy's own.
 *
 * @example
 * const add = remoteProxy(binding) as RemoteFunction<(a: number, b: number) => number>;
 */
export function remoteProxy(binding: ServiceBinding): unknown {
  const methods = new Map<string, (...args: unknown[]) => ObjectFuture<unknown>>();
  const target = function remoteService(): void {};
  Object.defineProperty(target, "name", { value: binding.service });
  Object.defineProperty(target, inspectSymbol, { value: () => `[Remote ${binding.service} in ${binding.sessionId}]` });
  return new Proxy(target, {
    apply: (_target, _this, args: unknown[]) => callRemote(binding, null, args),
    get(t, prop, receiver) {
      if (typeof prop !== "string" || prop === "then" || prop in t) return Reflect.get(t, prop, receiver) as unknown;
      let method = methods.get(prop);
      if (!method) {
        method = (...args: unknown[]) => callRemote(binding, prop, args);
        methods.set(prop, method);
      }
      return method;
    },
  });
}
