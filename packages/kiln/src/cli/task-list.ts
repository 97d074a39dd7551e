import type { KilnClient, TaskUpdate } from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import { formatClock, taskStateName } from "./format.js";
import { renderTable } from "./table.js";

/** One row of `kiln list -t`: a task's latest state, when it got it and, once it failed or was cancelled, why. */
export interface TaskRow {
  session: string;
  task: string;
  state: flame.TaskState;
  /** Unix milliseconds of the last state change. */
  time: number;
  message?: string;
}

/** What `kiln list -t` keeps: tasks in these states, up to `limit` rows. */
export interface TaskFilter {
  states?: ReadonlySet<flame.TaskState>;
  /** 1 or more. */
  limit?: number;
}

const ENDED_WITH_A_REASON = new Set<flame.TaskState>([flame.TaskState.Failed, flame.TaskState.Cancelled]);

/** A row from a listed task: its last event says when, and why it failed or was cancelled. */
export function taskRow(task: flame.Task): TaskRow {
  const last = task.status?.events.at(-1);
  const state = task.status?.state ?? flame.TaskState.Pending;
  const row: TaskRow = {
    session: task.spec?.sessionId ?? "",
    task: task.metadata?.id ?? "",
    state,
    time: Number(last?.creationTime ?? task.status?.creationTime ?? 0n),
  };
  if (ENDED_WITH_A_REASON.has(state) && last?.message) row.message = last.message;
  return row;
}

/** A row from a watched change. */
export function updateRow(u: TaskUpdate): TaskRow {
  const row: TaskRow = { session: u.sessionId, task: u.taskId, state: u.state, time: u.time };
  if (u.message !== undefined) row.message = u.message;
  return row;
}

/**
 * `kiln list -t` columns: Task, State, Updated (HH:MM:SS), Message, with a
 * Session column first when the rows come from more than one session.
 */
export function taskTable(rows: readonly TaskRow[], withSession: boolean): string {
  const headers = ["Task", "State", "Updated", "Message"];
  const cells = (r: TaskRow) => [r.task, taskStateName(r.state), formatClock(r.time), r.message ?? ""];
  return renderTable(
    withSession ? ["Session", ...headers] : headers,
    rows.map((r) => (withSession ? [r.session, ...cells(r)] : cells(r))),
  );
}

/** The rows as `-o json` prints them: `{"tasks": [{"session", "task", "state", "time", "message"?}]}`. */
export function taskRowsJson(rows: readonly TaskRow[]): { tasks: Record<string, string | number>[] } {
  return {
    tasks: rows.map((r) => ({
      session: r.session,
      task: r.task,
      state: taskStateName(r.state),
      time: r.time,
      ...(r.message !== undefined ? { message: r.message } : {}),
    })),
  };
}

/** Gathers the rows a filter keeps; `add` answers whether more are wanted. */
function keeper(filter: TaskFilter): { rows: TaskRow[]; add(row: TaskRow): boolean } {
  const rows: TaskRow[] = [];
  return {
    rows,
    add(row) {
      if (!filter.states || filter.states.has(row.state)) rows.push(row);
      return filter.limit === undefined || rows.length < filter.limit;
    },
  };
}

/** The rows `filter` keeps, in the order given. */
export function filterTaskRows(rows: Iterable<TaskRow>, filter: TaskFilter): TaskRow[] {
  const kept = keeper(filter);
  for (const row of rows) if (!kept.add(row)) break;
  return kept.rows;
}

/**
 * The tasks of `sessionIds`, in that order and by id within a session, that
 * `filter` keeps. Stops reading once `filter.limit` rows are found.
 */
export async function listTaskRows(
  client: KilnClient,
  sessionIds: readonly string[],
  filter: TaskFilter,
): Promise<TaskRow[]> {
  const kept = keeper(filter);
  sessions: for (const id of sessionIds) {
    for await (const task of client.session(id).listTasks()) if (!kept.add(taskRow(task))) break sessions;
  }
  return kept.rows;
}
