import { create } from "@bufbuild/protobuf";
import { flame } from "@kiln/protocol/proto";

/** What a service learns when its executor is bound to a session. */
export interface SessionContextInfo {
  sessionId: string;
  application: { name: string; command?: string; workingDirectory?: string; url?: string };
  commonData?: Uint8Array;
}

/** One task handed to the service. */
export interface TaskContextInfo {
  taskId: string;
  sessionId: string;
  input?: Uint8Array;
  /**
   * Aborts when nobody wants the result any more: the task was cancelled
   * (Session.cancel, CancelTasks), or the agent that asked for it went away.
   * Stop the work (kill what you started) and return or throw: either way
   * the result is dropped.
   */
  signal: AbortSignal;
}

/**
 * The code of a service. `onTaskInvoke` may run for several tasks at once;
 * what it returns (bytes, or a string sent as UTF-8) is the task's output, and
 * what it throws fails the task with the error's message.
 */
export interface ServiceHandlers {
  onSessionEnter?(ctx: SessionContextInfo): void | Promise<void>;
  onTaskInvoke(ctx: TaskContextInfo): Uint8Array | string | void | Promise<Uint8Array | string | void>;
  onSessionLeave?(): void | Promise<void>;
}

/** The return code of a task or session hook that threw. */
export const HANDLER_FAILED = -1;

/**
 * Thrown by `onTaskInvoke` to fail a task and still hand the client bytes
 * about the failure (a Runner sends the encoded remote error this way); any
 * other error fails the task with its message only.
 *
 * @example
 * throw new TaskFailure(`${err.name}: ${err.message}`, encodeValue(err));
 */
export class TaskFailure extends Error {
  readonly output: Uint8Array;
  constructor(message: string, output: Uint8Array) {
    super(message);
    this.name = "TaskFailure";
    this.output = output;
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const utf8 = new TextEncoder();

function toOutput(value: Uint8Array | string | void): Uint8Array | undefined {
  if (value === undefined) return undefined;
  return typeof value === "string" ? utf8.encode(value) : value;
}

/**
 * Runs `onTaskInvoke` with `abort.signal` as the task's abort signal, read
 * only if the handler reads it; never rejects: a thrown error becomes return
 * code -1 with its message.
 */
export async function runTask(
  handlers: ServiceHandlers,
  task: flame.TaskContext,
  abort: { readonly signal: AbortSignal },
): Promise<flame.TaskResult> {
  try {
    const info: TaskContextInfo = {
      taskId: task.taskId,
      sessionId: task.sessionId,
      get signal() {
        return abort.signal;
      },
    };
    if (task.input !== undefined) info.input = task.input;
    const output = toOutput(await handlers.onTaskInvoke(info));
    return create(flame.TaskResultSchema, { returnCode: 0, ...(output ? { output } : {}) });
  } catch (err) {
    const output = err instanceof TaskFailure ? { output: err.output } : {};
    return create(flame.TaskResultSchema, { returnCode: HANDLER_FAILED, message: errorMessage(err), ...output });
  }
}

/** Runs a session hook; never rejects: a thrown error becomes return code -1 with its message. */
export async function runHook(hook: () => void | Promise<void>): Promise<flame.Result> {
  try {
    await hook();
    return create(flame.ResultSchema, { returnCode: 0 });
  } catch (err) {
    return create(flame.ResultSchema, { returnCode: HANDLER_FAILED, message: errorMessage(err) });
  }
}

export function toSessionContextInfo(ctx: flame.SessionContext): SessionContextInfo {
  const app = ctx.application;
  const application: SessionContextInfo["application"] = { name: app?.name ?? "" };
  if (app?.command !== undefined) application.command = app.command;
  if (app?.workingDirectory !== undefined) application.workingDirectory = app.workingDirectory;
  if (app?.url !== undefined) application.url = app.url;
  const info: SessionContextInfo = { sessionId: ctx.sessionId, application };
  if (ctx.commonData !== undefined) info.commonData = ctx.commonData;
  return info;
}
