import { flame } from "@kiln/protocol/proto";
import { UsageError } from "./exit-codes.js";

/** `--state` values for sessions, Flame's names in lower case. */
export const SESSION_STATES: Readonly<Record<string, flame.SessionState>> = {
  open: flame.SessionState.Open,
  closed: flame.SessionState.Closed,
};

/** `--state` values for tasks, Flame's names in lower case. */
export const TASK_STATES: Readonly<Record<string, flame.TaskState>> = {
  pending: flame.TaskState.Pending,
  running: flame.TaskState.Running,
  succeed: flame.TaskState.Succeed,
  failed: flame.TaskState.Failed,
  cancelled: flame.TaskState.Cancelled,
};

/**
 * Parses `--state`: one state or several separated by commas, in any case.
 * An unknown name is a usage error listing the allowed ones.
 *
 * @example
 * parseStates("failed,Cancelled", TASK_STATES, "task") // Set { Failed, Cancelled }
 */
export function parseStates<S>(text: string, allowed: Readonly<Record<string, S>>, kind: string): Set<S> {
  const states = new Set<S>();
  for (const part of text.split(",")) {
    const name = part.trim().toLowerCase();
    const state = Object.hasOwn(allowed, name) ? allowed[name] : undefined;
    if (state === undefined)
      throw new UsageError(
        `--state: "${part.trim()}" is not a ${kind} state (allowed: ${Object.keys(allowed).join(", ")})`,
      );
    states.add(state);
  }
  return states;
}
