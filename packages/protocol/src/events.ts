import * as flame from "./proto/flame.js";

/**
 * Session-level event codes. Task events use the numeric flame.v1.TaskState
 * they moved to (Flame's convention), so those are not listed here.
 */
export const SessionEvent = {
  BindFailedInstall: 1010,
  BindFailedProcessStart: 1011,
  BindFailedSessionEnter: 1012,
  BindRetryLimit: 1002,
  ProcessExited: 1020,
  ExecutorLost: 1021,
  /** No connected node could hold one of the session's executors, even empty; its tasks wait. */
  Unschedulable: 1030,
  /** After Unschedulable: a node that can hold one is connected now. */
  Schedulable: 1031,
} as const;
export type SessionEventCode = (typeof SessionEvent)[keyof typeof SessionEvent];

/** What each session event means: the message of an event recorded without details. */
const SESSION_EVENT_DESCRIPTIONS: Record<SessionEventCode, string> = {
  [SessionEvent.BindFailedInstall]: "an executor could not install the application",
  [SessionEvent.BindFailedProcessStart]: "an executor could not start the service process",
  [SessionEvent.BindFailedSessionEnter]: "the service refused to enter the session",
  [SessionEvent.BindRetryLimit]: "binding failed too many times; the pending tasks failed",
  [SessionEvent.ProcessExited]: "a service process exited; its executor restarts it",
  [SessionEvent.ExecutorLost]: "an executor was lost; its tasks go back to pending",
  [SessionEvent.Unschedulable]: "no connected node can ever hold one of the session's executors; its tasks wait",
  [SessionEvent.Schedulable]: "a node that can hold the session's executors is connected now",
};

/** What a task event (its code is the state the task moved to) means. */
const TASK_EVENT_DESCRIPTIONS: Record<flame.TaskState, string> = {
  [flame.TaskState.Pending]: "pending",
  [flame.TaskState.Running]: "running",
  [flame.TaskState.Succeed]: "succeeded",
  [flame.TaskState.Failed]: "failed",
  [flame.TaskState.Cancelled]: "cancelled",
};

/**
 * A description of an event code (a session event, or the task state a task event moved to),
 * for an event that carries no message; "no message" for a code Kiln does not know (a Flame server's).
 *
 * @example
 * describeEventCode(1020) // "a service process exited; its executor restarts it"
 * describeEventCode(2)    // "succeeded"
 */
export function describeEventCode(code: number): string {
  return (
    (SESSION_EVENT_DESCRIPTIONS as Record<number, string>)[code] ??
    (TASK_EVENT_DESCRIPTIONS as Record<number, string>)[code] ??
    "no message"
  );
}

/**
 * The message an event of `code` is recorded with: `detail` when it says anything, else the code's
 * description, so that no event is ever shown with an empty message.
 *
 * @example
 * eventMessage(SessionEvent.ProcessExited, "")            // "a service process exited; its executor restarts it"
 * eventMessage(flame.TaskState.Failed, "exit code 3")     // "exit code 3"
 */
export function eventMessage(code: number, detail: string | undefined): string {
  return detail?.trim() ? detail : describeEventCode(code);
}

/** Session event code for an agent's BindFailure code (10, 11, 12). */
export function bindFailureEvent(code: number): number {
  if (code === 10) return SessionEvent.BindFailedInstall;
  if (code === 12) return SessionEvent.BindFailedSessionEnter;
  return SessionEvent.BindFailedProcessStart;
}
