import { flame } from "@kiln/protocol/proto";
import type { kiln } from "@kiln/protocol/proto";
import { TaskFailedError } from "@kiln/protocol";

/** One state change of one task, as seen by a watcher. */
export interface TaskUpdate {
  sessionId: string;
  taskId: string;
  state: flame.TaskState;
  /** Unix milliseconds of the change. */
  time: number;
  /** Set on Succeed, and on Failed when the service sent one (unless the watch omits outputs). */
  output?: Uint8Array;
  /** Why a task failed or was cancelled. */
  message?: string;
  /** The session's change number of this change; a watch resumes after it (`afterSeq`). */
  seq: bigint;
}

export function isTerminal(state: flame.TaskState): boolean {
  return state === flame.TaskState.Succeed || state === flame.TaskState.Failed || state === flame.TaskState.Cancelled;
}

export function toTaskUpdate(sessionId: string, u: kiln.TaskUpdate): TaskUpdate {
  return {
    sessionId,
    taskId: u.taskId,
    state: u.state,
    time: Number(u.time),
    seq: u.seq,
    ...(u.output !== undefined ? { output: u.output } : {}),
    ...(u.message !== undefined ? { message: u.message } : {}),
  };
}

/** The output of a Succeeded task; a TaskFailedError for a Failed or Cancelled one. */
export function outputOf(u: TaskUpdate): Uint8Array {
  if (u.state === flame.TaskState.Succeed) return u.output ?? new Uint8Array(0);
  const cancelled = u.state === flame.TaskState.Cancelled;
  const message = u.message ?? (cancelled ? "cancelled" : "no message");
  throw new TaskFailedError(u.sessionId, u.taskId, message, cancelled, u.output);
}
