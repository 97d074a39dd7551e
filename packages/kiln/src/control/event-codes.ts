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

/** Session event code for an agent's BindFailure code (10, 11, 12). */
export function bindFailureEvent(code: number): number {
  if (code === 10) return SessionEvent.BindFailedInstall;
  if (code === 12) return SessionEvent.BindFailedSessionEnter;
  return SessionEvent.BindFailedProcessStart;
}
