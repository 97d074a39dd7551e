import { FailedPreconditionError } from "@kiln/protocol";
import type Database from "better-sqlite3";
import * as fs from "node:fs";
import * as path from "node:path";
import { IdleCheckpoints, openOwnedDatabase, SpaceReclaimer, useIncrementalVacuum } from "../../util/sqlite-file.js";
import {
  applicationFromRow,
  sessionsFromRows,
  submissionFromRow,
  taskFromRow,
  taskValues,
  unfinishedSpans,
  WORKING_SET_QUERIES,
  type ApplicationRow,
  type EventRow,
  type SessionRow,
  type SubmissionRow,
  type TaskRow,
} from "./rows.js";
import { MIGRATIONS } from "./sqlite-migrations.js";
import type {
  Durability,
  PendingEnd,
  SessionProgress,
  Store,
  StoredApplication,
  StoredEvent,
  StoredSession,
  StoredSubmission,
  StoredTask,
  StoreWriter,
  TaskPage,
  WorkingSet,
} from "./store.js";

/**
 * The control plane's SQLite file (WAL), the embedded default store. Commits are synchronous: the
 * writer's methods run their statements as they are called, inside the transaction `commit` opens.
 */
export class SqliteStore implements Store, StoreWriter {
  private readonly db: Database.Database;
  private readonly stmts;
  // Made once: better-sqlite3 builds a new wrapper on every db.transaction() call, a fifth of a lone commit.
  private readonly inTransaction: (fn: () => unknown) => unknown;
  private readonly checkpoints: IdleCheckpoints;
  private readonly reclaimer: SpaceReclaimer;
  /** A session was deleted in the transaction under way: its pages are given back after the commit. */
  private freed = false;

  private constructor(db: Database.Database, file: string) {
    this.db = db;
    this.description = `sqlite ${file}`;
    this.inTransaction = db.transaction((fn: () => unknown) => fn());
    this.checkpoints = new IdleCheckpoints(db);
    this.reclaimer = new SpaceReclaimer(db);
    this.stmts = {
      putApplication: db.prepare(
        "INSERT INTO applications (name, spec, state, creation_time) VALUES (?, ?, ?, ?) " +
          "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, state = excluded.state",
      ),
      deleteApplication: db.prepare("DELETE FROM applications WHERE name = ?"),
      putSession: db.prepare(
        "INSERT INTO sessions (id, application, spec, state, creation_time, completion_time) VALUES (?, ?, ?, ?, ?, ?) " +
          "ON CONFLICT(id) DO UPDATE SET spec = excluded.spec, state = excluded.state, completion_time = excluded.completion_time",
      ),
      putSessionProgress: db.prepare(
        "UPDATE sessions SET task_count = ?, succeed = ?, failed = ?, cancelled = ?, last_seq = ? WHERE id = ?",
      ),
      deleteSession: db.prepare("DELETE FROM sessions WHERE id = ?"),
      deleteSessionTasks: db.prepare("DELETE FROM tasks WHERE session_id = ?"),
      deleteSessionEvents: db.prepare("DELETE FROM session_events WHERE session_id = ?"),
      deleteSessionSubmissions: db.prepare("DELETE FROM submissions WHERE session_id = ?"),
      putSubmission: db.prepare(
        "INSERT OR REPLACE INTO submissions (session_id, key, first_task_id, count, time) VALUES (?, ?, ?, ?, ?)",
      ),
      deleteSubmissionsBefore: db.prepare("DELETE FROM submissions WHERE time < ?"),
      putNode: db.prepare("INSERT OR IGNORE INTO nodes (name) VALUES (?)"),
      deleteNode: db.prepare("DELETE FROM nodes WHERE name = ?"),
      addSessionEvent: db.prepare(
        "INSERT INTO session_events (session_id, seq, code, message, time) VALUES (?, ?, ?, ?, ?)",
      ),
      upsertTask: db.prepare(
        "INSERT INTO tasks (session_id, id, state, input, output, message, attempt, retries, creation_time, completion_time, seq, events, output_to) " +
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(session_id, id) DO UPDATE SET state = excluded.state, " +
          "output = excluded.output, message = excluded.message, attempt = excluded.attempt, retries = excluded.retries, " +
          "completion_time = excluded.completion_time, seq = excluded.seq, events = excluded.events",
      ),
      endUnfinishedTasks: db.prepare(
        "UPDATE tasks SET state = ?, message = ?, completion_time = ?, seq = ? + id - ?, " +
          "events = json_insert(events, '$[#]', json(?)) WHERE session_id = ? AND id BETWEEN ? AND ? AND state < 2",
      ),
      getTask: db.prepare("SELECT * FROM tasks WHERE session_id = ? AND id = ?"),
      // One statement for every page: a bound left open is given as the widest value.
      listTasks: db.prepare(
        "SELECT * FROM tasks WHERE session_id = ? AND id > ? AND id <= ? AND seq > ? ORDER BY id LIMIT ?",
      ),
      // The condition is the partial index's (tasks_unfinished), so only unfinished tasks are read.
      listUnfinishedTasks: db.prepare(
        "SELECT * FROM tasks WHERE session_id = ? AND id > ? AND id <= ? AND state < 2 ORDER BY id LIMIT ?",
      ),
    };
  }

  /**
   * Opens (creating if needed) the store at `file` and runs pending migrations.
   * Throws FailedPreconditionError when another control plane holds the file.
   */
  readonly description: string;

  static open(file: string, durability: Durability = "normal"): SqliteStore {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    // A control plane restarting waits up to 5 s for the old one to let go of the file.
    const db = openOwnedDatabase(file, "another control plane (one data dir serves one control plane)", 5_000);
    try {
      // NORMAL in WAL mode survives a process kill (-9); FULL also survives power loss.
      db.pragma(`synchronous = ${durability === "full" ? "FULL" : "NORMAL"}`);
      useIncrementalVacuum(db);
      migrate(db);
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteStore(db, file);
  }

  commit(apply: (w: StoreWriter) => void): void {
    this.inTransaction(() => apply(this));
    this.checkpoints.wrote();
    if (this.freed) {
      this.freed = false;
      this.reclaimer.reclaim();
    }
  }

  putApplication(app: StoredApplication): void {
    this.stmts.putApplication.run(app.name, app.spec, app.state, app.creationTime);
  }

  deleteApplication(name: string): void {
    this.stmts.deleteApplication.run(name);
  }

  putSession(s: StoredSession): void {
    this.stmts.putSession.run(s.id, s.application, s.spec, s.state, s.creationTime, s.completionTime ?? null);
  }

  putSessionProgress(id: string, p: SessionProgress): void {
    this.stmts.putSessionProgress.run(p.taskCount, p.succeed, p.failed, p.cancelled, p.lastSeq, id);
  }

  endUnfinishedTasks(sessionId: string, from: number, to: number, end: PendingEnd, firstSeq: number): void {
    const event = JSON.stringify({ code: end.state, message: end.message, time: end.time });
    this.stmts.endUnfinishedTasks.run(end.state, end.message, end.time, firstSeq, from, event, sessionId, from, to);
  }

  deleteSession(id: string): void {
    this.stmts.deleteSessionTasks.run(id);
    this.stmts.deleteSessionEvents.run(id);
    this.stmts.deleteSessionSubmissions.run(id);
    this.stmts.deleteSession.run(id);
    this.freed = true;
  }

  putSubmission(s: StoredSubmission): void {
    this.stmts.putSubmission.run(s.sessionId, s.key, s.firstTaskId, s.count, s.time);
  }

  /** Forgets submission keys first used before `time` (Unix ms). */
  deleteSubmissionsBefore(time: number): void {
    this.stmts.deleteSubmissionsBefore.run(time);
  }

  putNode(name: string): void {
    this.stmts.putNode.run(name);
  }

  deleteNode(name: string): void {
    this.stmts.deleteNode.run(name);
  }

  addSessionEvent(sessionId: string, seq: number, e: StoredEvent): void {
    this.stmts.addSessionEvent.run(sessionId, seq, e.code, e.message ?? null, e.time);
  }

  /** Inserts a task or updates its mutable columns (the input is written once). */
  upsertTask(t: StoredTask): void {
    this.stmts.upsertTask.run(...taskValues(t));
  }

  loadWorkingSet(pendingPerSession: number): Promise<WorkingSet> {
    const q = WORKING_SET_QUERIES;
    const all = <T>(sql: string) => this.db.prepare(sql).all() as T[];
    const ids = this.db.prepare(q.unfinishedIds).raw().iterate() as IterableIterator<[string, number]>;
    const { firstThrough, backlog } = unfinishedSpans(ids, pendingPerSession);
    const tasks: StoredTask[] = [];
    for (const [sessionId, lastId] of firstThrough)
      for (const row of this.stmts.listUnfinishedTasks.all(sessionId, 0, lastId, pendingPerSession) as TaskRow[])
        tasks.push(taskFromRow(row));
    return Promise.resolve({
      applications: all<ApplicationRow>(q.applications).map(applicationFromRow),
      sessions: sessionsFromRows(all<SessionRow>(q.sessions), all<EventRow>(q.events)),
      tasks,
      backlog,
      submissions: all<SubmissionRow>(q.submissions).map(submissionFromRow),
      nodes: all<{ name: string }>(q.nodes).map((r) => r.name),
    });
  }

  getTask(sessionId: string, id: number): Promise<StoredTask | undefined> {
    const row = this.stmts.getTask.get(sessionId, id) as TaskRow | undefined;
    return Promise.resolve(row && taskFromRow(row));
  }

  listTasks(sessionId: string, page: TaskPage): Promise<StoredTask[]> {
    const through = page.throughId ?? Number.MAX_SAFE_INTEGER;
    const rows = (
      page.unfinishedOnly
        ? this.stmts.listUnfinishedTasks.all(sessionId, page.afterId, through, page.limit)
        : this.stmts.listTasks.all(sessionId, page.afterId, through, page.changedAfter ?? -1, page.limit)
    ) as TaskRow[];
    return Promise.resolve(rows.map(taskFromRow));
  }

  close(): Promise<void> {
    this.checkpoints.stop();
    this.reclaimer.stop();
    this.db.close();
    return Promise.resolve();
  }
}

function migrate(db: Database.Database): void {
  const current = db.pragma("user_version", { simple: true }) as number;
  if (current > MIGRATIONS.length)
    throw new FailedPreconditionError(
      `the store's schema is version ${current}, newer than this Kiln knows (${MIGRATIONS.length}): run the Kiln that wrote it, or a newer one`,
    );
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
