/**
 * Rows as both SQL backends read them (the same columns in SQLite and PostgreSQL), and how they become
 * the store's records.
 */
import type {
  SessionProgress,
  StoredApplication,
  StoredEvent,
  StoredSession,
  StoredSubmission,
  StoredTask,
  WorkingSet,
} from "./store.js";

export interface SessionRow {
  id: string;
  application: string;
  spec: Buffer;
  state: number;
  creation_time: number;
  completion_time: number | null;
  task_count: number;
  succeed: number;
  failed: number;
  cancelled: number;
  last_seq: number;
}

export interface TaskRow {
  session_id: string;
  id: number;
  state: number;
  input: Buffer | null;
  output: Buffer | null;
  message: string | null;
  attempt: number;
  retries: number;
  creation_time: number;
  completion_time: number | null;
  seq: number;
  /** The task's events, JSON. */
  events: string;
  output_to: string | null;
}

export interface EventRow {
  session_id: string;
  code: number;
  message: string | null;
  time: number;
}

export function taskFromRow(r: TaskRow): StoredTask {
  return {
    sessionId: r.session_id,
    id: r.id,
    state: r.state,
    ...(r.input !== null ? { input: r.input } : {}),
    ...(r.output !== null ? { output: r.output } : {}),
    ...(r.message !== null ? { message: r.message } : {}),
    attempt: r.attempt,
    retries: r.retries,
    creationTime: r.creation_time,
    ...(r.completion_time !== null ? { completionTime: r.completion_time } : {}),
    seq: r.seq,
    events: JSON.parse(r.events) as StoredEvent[],
    ...(r.output_to !== null ? { outputTo: r.output_to } : {}),
  };
}

/** Sessions with their progress and events (read in session and sequence order), as the working set holds them. */
export function sessionsFromRows(
  sessions: SessionRow[],
  events: EventRow[],
): { session: StoredSession; progress: SessionProgress; events: StoredEvent[] }[] {
  const eventsBySession = new Map<string, StoredEvent[]>();
  for (const r of events) {
    let list = eventsBySession.get(r.session_id);
    if (!list) eventsBySession.set(r.session_id, (list = []));
    list.push({ code: r.code, time: r.time, ...(r.message !== null ? { message: r.message } : {}) });
  }
  return sessions.map((r) => ({
    session: {
      id: r.id,
      application: r.application,
      spec: r.spec,
      state: r.state,
      creationTime: r.creation_time,
      ...(r.completion_time !== null ? { completionTime: r.completion_time } : {}),
    },
    progress: {
      taskCount: r.task_count,
      succeed: r.succeed,
      failed: r.failed,
      cancelled: r.cancelled,
      lastSeq: r.last_seq,
    },
    events: eventsBySession.get(r.id) ?? [],
  }));
}

export interface ApplicationRow {
  name: string;
  spec: Buffer;
  state: number;
  creation_time: number;
}

export function applicationFromRow(r: ApplicationRow): StoredApplication {
  return { name: r.name, spec: r.spec, state: r.state, creationTime: r.creation_time };
}

export interface SubmissionRow {
  session_id: string;
  key: string;
  first_task_id: number;
  count: number;
  time: number;
}

export function submissionFromRow(r: SubmissionRow): StoredSubmission {
  return { sessionId: r.session_id, key: r.key, firstTaskId: r.first_task_id, count: r.count, time: r.time };
}

/**
 * Splits the ids of unfinished tasks (in session and id order) into each session's first `perSession`
 * (given as the last id of them, for the backend to read those rows) and the rest as spans of
 * consecutive ids (the sessions' backlogs).
 */
export function unfinishedSpans(
  ids: Iterable<[sessionId: string, id: number]>,
  perSession: number,
): { firstThrough: Map<string, number>; backlog: WorkingSet["backlog"] } {
  const firstThrough = new Map<string, number>();
  const backlog: WorkingSet["backlog"] = [];
  let session: string | undefined;
  let seen = 0;
  for (const [sessionId, id] of ids) {
    if (sessionId !== session) {
      session = sessionId;
      seen = 0;
    }
    if (seen++ < perSession) {
      firstThrough.set(sessionId, id);
      continue;
    }
    const last = backlog[backlog.length - 1];
    if (last && last.sessionId === sessionId && last.to + 1 === id) last.to = id;
    else backlog.push({ sessionId, from: id, to: id });
  }
  return { firstThrough, backlog };
}

/** The queries of the working set, the same in both dialects. */
export const WORKING_SET_QUERIES = {
  applications: "SELECT name, spec, state, creation_time FROM applications",
  events: "SELECT session_id, code, message, time FROM session_events ORDER BY session_id, seq",
  sessions: "SELECT * FROM sessions",
  // The condition is the partial index's (tasks_unfinished), so the index alone answers it.
  unfinishedIds: "SELECT session_id, id FROM tasks WHERE state < 2 ORDER BY session_id, id",
  submissions: "SELECT session_id, key, first_task_id, count, time FROM submissions ORDER BY time",
  nodes: "SELECT name FROM nodes",
} as const;

/**
 * A task's column values in the order of both backends' upserts: session_id, id, state, input, output,
 * message, attempt, retries, creation_time, completion_time, seq, events, output_to.
 */
export function taskValues(t: StoredTask): unknown[] {
  return [
    t.sessionId,
    t.id,
    t.state,
    t.input ?? null,
    t.output ?? null,
    t.message ?? null,
    t.attempt,
    t.retries,
    t.creationTime,
    t.completionTime ?? null,
    t.seq,
    JSON.stringify(t.events),
    t.outputTo ?? null,
  ];
}
