/**
 * The control plane's store: what every backend (SQLite, PostgreSQL) offers. Memory holds the working
 * set (open sessions, their unfinished tasks, nodes); the store holds everything, and finished tasks are
 * read back from it on demand. Writes go through GroupCommit, one transaction per event-loop turn.
 */

/** An event as stored: code, optional message, Unix ms. */
export interface StoredEvent {
  code: number;
  message?: string;
  time: number;
}

export interface StoredApplication {
  name: string;
  /** flame.v1.ApplicationSpec, protobuf binary. */
  spec: Uint8Array;
  state: number;
  creationTime: number;
}

export interface StoredSession {
  id: string;
  application: string;
  /** flame.v1.SessionSpec (resolved defaults), protobuf binary. */
  spec: Uint8Array;
  state: number;
  creationTime: number;
  completionTime?: number;
}

/**
 * What a session's finished tasks add up to, written in the commit that finishes them, so start-up
 * need not read finished tasks to count them.
 */
export interface SessionProgress {
  /** The highest task id given out (ids are consecutive from 1). */
  taskCount: number;
  succeed: number;
  failed: number;
  cancelled: number;
  /** The sequence number of the session's last task change a watcher may have seen. */
  lastSeq: number;
}

export interface StoredTask {
  sessionId: string;
  id: number;
  state: number;
  input?: Uint8Array;
  output?: Uint8Array;
  message?: string;
  /** Fencing token: incremented at every dispatch. */
  attempt: number;
  /** Times the task was requeued after losing its executor. */
  retries: number;
  creationTime: number;
  completionTime?: number;
  /** The session's change sequence number at this task's last change (see SessionProgress.lastSeq). */
  seq: number;
  events: StoredEvent[];
  /** The watcher key its outputs go to (CreateTasksRequest.output_to), if it was created with one. */
  outputTo?: string;
}

/** A CreateTasks request's idempotency key and the tasks it created. */
export interface StoredSubmission {
  sessionId: string;
  key: string;
  firstTaskId: number;
  count: number;
  /** Unix ms of the first request. */
  time: number;
}

/** What start-up reads: everything but finished tasks, and of a session's unfinished ones the first few. */
export interface WorkingSet {
  applications: StoredApplication[];
  sessions: { session: StoredSession; progress: SessionProgress; events: StoredEvent[] }[];
  /**
   * Tasks not yet finished (Pending, or Running as written by older versions), in session and id order:
   * at most the `pendingPerSession` first of each session.
   */
  tasks: StoredTask[];
  /** The ids of the other unfinished tasks, as spans of consecutive ids, in session and id order. */
  backlog: { sessionId: string; from: number; to: number }[];
  submissions: StoredSubmission[];
  /** Nodes registered and not given up on when the store was last written (see Orchestrator.recover). */
  nodes: string[];
}

/** One page of a session's tasks in id order: ids above `afterId`, at most `limit`. */
export interface TaskPage {
  afterId: number;
  limit: number;
  /** Only tasks whose last change came after this sequence number (a watcher resuming). */
  changedAfter?: number;
  /** Only unfinished tasks (state Pending, or Running as written by older versions). */
  unfinishedOnly?: boolean;
  /** Only ids up to this one. */
  throughId?: number;
}

/** How tasks that waited in the store end without coming back to memory (a session closed, a cancel). */
export interface PendingEnd {
  state: number;
  message: string;
  /** Unix ms. */
  time: number;
}

/**
 * The mutations one transaction may hold. Each is one statement (or one row of a batched one); a
 * backend may run them as they come (SQLite) or gather them and send them at commit (PostgreSQL).
 */
export interface StoreWriter {
  putApplication(app: StoredApplication): void;
  deleteApplication(name: string): void;
  /** Inserts a session or updates its spec, state and completion time. */
  putSession(s: StoredSession): void;
  putSessionProgress(sessionId: string, p: SessionProgress): void;
  /** Deletes a session with its tasks, events and submission keys. */
  deleteSession(id: string): void;
  addSessionEvent(sessionId: string, seq: number, e: StoredEvent): void;
  /** Inserts a task or updates its mutable columns (the input is written once). */
  upsertTask(t: StoredTask): void;
  /**
   * Ends the unfinished tasks with ids `from`..`to`: state, message and completion time set, an event
   * appended, and `seq` numbered from `firstSeq` by id (firstSeq + id - from).
   */
  endUnfinishedTasks(sessionId: string, from: number, to: number, end: PendingEnd, firstSeq: number): void;
  putSubmission(s: StoredSubmission): void;
  /** Forgets submission keys first used before `time` (Unix ms). */
  deleteSubmissionsBefore(time: number): void;
  putNode(name: string): void;
  deleteNode(name: string): void;
}

export interface Store {
  /** For messages: "sqlite <file>" or "postgres <host>/<db>". */
  readonly description: string;
  /**
   * Runs `apply` and commits what it wrote as one transaction. A store whose commits are synchronous
   * returns once committed; others return a promise that settles at the commit. Either throws (or
   * rejects) with nothing of it stored.
   */
  commit(apply: (w: StoreWriter) => void): void | Promise<void>;
  loadWorkingSet(pendingPerSession: number): Promise<WorkingSet>;
  getTask(sessionId: string, id: number): Promise<StoredTask | undefined>;
  listTasks(sessionId: string, page: TaskPage): Promise<StoredTask[]>;
  close(): Promise<void>;
}

export type Durability = "normal" | "full";
