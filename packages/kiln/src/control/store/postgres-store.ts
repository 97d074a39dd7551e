import { ErrorCode, FailedPreconditionError, KilnError } from "@kiln/protocol";
import pg from "pg";
import { POSTGRES_MIGRATIONS } from "./postgres-migrations.js";
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
import type {
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

/** Where to connect: the parts of a postgres:// URL (see open-store.ts), the password kept out of messages. */
export interface PostgresTarget {
  host: string;
  port: number;
  database: string;
  user?: string;
  password?: string;
}

/**
 * The advisory lock key that says "a control plane owns this database" ("kiln" in ASCII). Advisory locks
 * are per database, so each database has one owner.
 */
const OWNER_LOCK_KEY = 0x6b696c6e;
/** How long a control plane restarting waits for the old one's lock to go, as SQLite's busy timeout does. */
const OWNER_LOCK_WAIT_MS = 5_000;
/** An unreachable server is reported after this long instead of hanging the start. */
const CONNECT_TIMEOUT_MS = 5_000;
/** Connections for reads (finished tasks, pages), so they do not queue behind commits on the writer's. */
const READ_CONNECTIONS = 3;

/** bigint columns come back as JS numbers: Kiln's ids, counters and Unix ms are all safe integers. */
const INT8_OID = 20;
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === INT8_OID && format !== "binary"
      ? (v: string) => Number(v)
      : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
};

/**
 * The writes of one commit, by kind. Each kind is one statement that takes its rows as arrays
 * (`unnest`), so a commit is a few statements whatever it holds.
 */
interface WriteKind {
  sql: string;
  /** A key per row when two rows of one statement may touch the same row (ON CONFLICT DO UPDATE refuses that). */
  key?: (row: unknown[]) => string;
  /** What is written when two rows share a key: the later one by default. */
  merge?: (earlier: unknown[], later: unknown[]) => unknown[];
}

const TASK_INPUT = 3;

function withInput(row: unknown[], input: unknown): unknown[] {
  const copy = [...row];
  copy[TASK_INPUT] = input;
  return copy;
}

const WRITES = {
  putApplication: {
    sql:
      "INSERT INTO applications (name, spec, state, creation_time) " +
      "SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::bigint[]) " +
      "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, state = excluded.state",
    key: (r) => r[0] as string,
  },
  deleteApplication: { sql: "DELETE FROM applications WHERE name = ANY($1::text[])" },
  putSession: {
    sql:
      "INSERT INTO sessions (id, application, spec, state, creation_time, completion_time) " +
      "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::bigint[], $6::bigint[]) " +
      "ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, state = excluded.state, completion_time = excluded.completion_time",
    key: (r) => r[0] as string,
  },
  putSessionProgress: {
    sql:
      "UPDATE sessions SET task_count = p.task_count, succeed = p.succeed, failed = p.failed, " +
      "cancelled = p.cancelled, last_seq = p.last_seq " +
      "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) " +
      "AS p(id, task_count, succeed, failed, cancelled, last_seq) WHERE sessions.id = p.id",
    key: (r) => r[0] as string,
  },
  // A session goes with its tasks, events and submission keys, in one statement.
  deleteSession: {
    sql:
      "WITH t AS (DELETE FROM tasks WHERE session_id = ANY($1::text[])), " +
      "e AS (DELETE FROM session_events WHERE session_id = ANY($1::text[])), " +
      "s AS (DELETE FROM submissions WHERE session_id = ANY($1::text[])) " +
      "DELETE FROM sessions WHERE id = ANY($1::text[])",
  },
  addSessionEvent: {
    sql:
      "INSERT INTO session_events (session_id, seq, code, message, time) " +
      "SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], $5::bigint[])",
  },
  upsertTask: {
    sql:
      "INSERT INTO tasks (session_id, id, state, input, output, message, attempt, retries, creation_time, completion_time, seq, events, output_to) " +
      "SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::bytea[], $5::bytea[], $6::text[], $7::int[], " +
      "$8::int[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[]) " +
      "ON CONFLICT (session_id, id) DO UPDATE SET state = excluded.state, output = excluded.output, " +
      "message = excluded.message, attempt = excluded.attempt, retries = excluded.retries, " +
      "completion_time = excluded.completion_time, seq = excluded.seq, events = excluded.events",
    key: (r) => `${r[0] as string}\0${r[1] as number}`,
    // The input is written once: a later write of the task that no longer carries it keeps the first one's.
    merge: (earlier, later) => (later[TASK_INPUT] === null ? withInput(later, earlier[TASK_INPUT]) : later),
  },
  // Spans of a session's backlog ended without reading them: the event appended to each task's list.
  endUnfinishedTasks: {
    sql:
      "UPDATE tasks SET state = p.state, message = p.message, completion_time = p.time, " +
      "seq = p.first_seq + tasks.id - p.from_id, events = (tasks.events::jsonb || p.event::jsonb)::text " +
      "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[], $5::text[], $6::bigint[], $7::bigint[], $8::text[]) " +
      "AS p(session_id, from_id, to_id, state, message, time, first_seq, event) " +
      "WHERE tasks.session_id = p.session_id AND tasks.id BETWEEN p.from_id AND p.to_id AND tasks.state < 2",
  },
  putSubmission: {
    sql:
      "INSERT INTO submissions (session_id, key, first_task_id, count, time) " +
      "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) " +
      "ON CONFLICT (session_id, key) DO UPDATE SET first_task_id = excluded.first_task_id, " +
      "count = excluded.count, time = excluded.time",
    key: (r) => `${r[0] as string}\0${r[1] as string}`,
  },
  deleteSubmissionsBefore: {
    sql: "DELETE FROM submissions WHERE time < (SELECT max(t) FROM unnest($1::bigint[]) AS t)",
  },
  putNode: {
    sql: "INSERT INTO nodes (name) SELECT * FROM unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
  },
  deleteNode: { sql: "DELETE FROM nodes WHERE name = ANY($1::text[])" },
} satisfies Record<keyof StoreWriter, WriteKind>;

type Kind = keyof typeof WRITES;

/** One statement of a commit: consecutive writes of one kind. */
interface Run {
  kind: Kind;
  rows: unknown[][];
}

/**
 * Gathers a commit's writes into runs: consecutive calls of one kind share a statement; a call of another
 * kind starts the next, so writes whose order matters (a session deleted, then created again) keep it.
 */
class CommitBatch implements StoreWriter {
  readonly runs: Run[] = [];

  private add(kind: Kind, row: unknown[]): void {
    const last = this.runs.at(-1);
    if (last?.kind === kind) last.rows.push(row);
    else this.runs.push({ kind, rows: [row] });
  }

  putApplication(app: StoredApplication): void {
    this.add("putApplication", [app.name, app.spec, app.state, app.creationTime]);
  }
  deleteApplication(name: string): void {
    this.add("deleteApplication", [name]);
  }
  putSession(s: StoredSession): void {
    this.add("putSession", [s.id, s.application, s.spec, s.state, s.creationTime, s.completionTime ?? null]);
  }
  putSessionProgress(id: string, p: SessionProgress): void {
    this.add("putSessionProgress", [id, p.taskCount, p.succeed, p.failed, p.cancelled, p.lastSeq]);
  }
  deleteSession(id: string): void {
    this.add("deleteSession", [id]);
  }
  addSessionEvent(sessionId: string, seq: number, e: StoredEvent): void {
    this.add("addSessionEvent", [sessionId, seq, e.code, e.message ?? null, e.time]);
  }
  upsertTask(t: StoredTask): void {
    this.add("upsertTask", taskValues(t));
  }
  endUnfinishedTasks(sessionId: string, from: number, to: number, end: PendingEnd, firstSeq: number): void {
    const event = JSON.stringify({ code: end.state, message: end.message, time: end.time });
    this.add("endUnfinishedTasks", [sessionId, from, to, end.state, end.message, end.time, firstSeq, event]);
  }
  putSubmission(s: StoredSubmission): void {
    this.add("putSubmission", [s.sessionId, s.key, s.firstTaskId, s.count, s.time]);
  }
  deleteSubmissionsBefore(time: number): void {
    this.add("deleteSubmissionsBefore", [time]);
  }
  putNode(name: string): void {
    this.add("putNode", [name]);
  }
  deleteNode(name: string): void {
    this.add("deleteNode", [name]);
  }
}

/** A run as one statement: its rows turned into one array per column. */
function statement(run: Run): pg.QueryConfig {
  const kind: WriteKind = WRITES[run.kind];
  let rows = run.rows;
  if (kind.key) {
    const byKey = new Map<string, unknown[]>();
    for (const row of rows) {
      const k = kind.key(row);
      const earlier = byKey.get(k);
      byKey.set(k, earlier && kind.merge ? kind.merge(earlier, row) : row);
    }
    rows = [...byKey.values()];
  }
  const columns = rows[0]!.map((_, i) => rows.map((r) => r[i]));
  return { name: run.kind, text: kind.sql, values: columns };
}

/**
 * The control plane's store in a PostgreSQL database, for clusters that outgrow one file. One connection
 * writes: it holds the advisory lock that makes this control plane the database's only one, and runs the
 * commits, one at a time (GroupCommit gathers what comes meanwhile into the next). Each commit is one
 * transaction of a few statements, one per run of writes of a kind, sent pipelined: one round trip.
 * Reads go over their own connections.
 * Commits are durable when acknowledged (synchronous_commit, PostgreSQL's default).
 */
export class PostgresStore implements Store {
  readonly description: string;
  /** Set when the writer's connection broke: every later commit fails with it, and the control plane stops. */
  private lost: Error | undefined;

  private constructor(
    private readonly writer: pg.Client,
    private readonly readers: pg.Pool,
    description: string,
  ) {
    this.description = description;
    writer.on("error", (err) => {
      this.lost = err;
    });
    writer.on("end", () => {
      this.lost ??= new Error("the connection closed");
    });
  }

  /**
   * Connects, takes the database's owner lock and runs pending migrations. Throws UnavailableError when the
   * server cannot be reached, FailedPreconditionError when another control plane holds the database or its
   * schema is newer than this Kiln knows.
   */
  static async open(target: PostgresTarget): Promise<PostgresStore> {
    const description = `postgres ${target.host}:${target.port}/${target.database}`;
    const config: pg.ClientConfig = {
      host: target.host,
      port: target.port,
      database: target.database,
      ...(target.user !== undefined ? { user: target.user } : {}),
      ...(target.password !== undefined ? { password: target.password } : {}),
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      application_name: "kiln control plane",
      types,
    };
    const writer = new pg.Client({ ...config, pipeline: true });
    // Until the store owns it, a broken connection is reported by the call under way.
    const ignore = () => undefined;
    writer.on("error", ignore);
    try {
      await writer.connect();
    } catch (err) {
      await writer.end().catch(ignore);
      throw unreachable(target, err);
    }
    try {
      await takeOwnerLock(writer, description);
      await migrate(writer);
    } catch (err) {
      await writer.end().catch(ignore);
      throw err;
    }
    writer.off("error", ignore);
    const readers = new pg.Pool({ ...config, max: READ_CONNECTIONS });
    // An idle reader whose connection breaks leaves the pool; the next read opens another.
    readers.on("error", ignore);
    return new PostgresStore(writer, readers, description);
  }

  commit(apply: (w: StoreWriter) => void): Promise<void> {
    const batch = new CommitBatch();
    apply(batch);
    return this.send(batch.runs.map(statement));
  }

  private async send(statements: pg.QueryConfig[]): Promise<void> {
    if (this.lost) throw this.lostError();
    if (statements.length === 0) return;
    try {
      // One statement is a transaction by itself: no BEGIN and COMMIT to send.
      if (statements.length === 1) {
        await this.writer.query(statements[0]!);
        return;
      }
      // Pipelined: the whole transaction goes out at once and costs one round trip, not one per statement.
      // After a failed statement the rest fail too and PostgreSQL turns the COMMIT into a ROLLBACK.
      const results = await Promise.allSettled([
        this.writer.query("BEGIN"),
        ...statements.map((s) => this.writer.query(s)),
        this.writer.query("COMMIT"),
      ]);
      const failed = results.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
      const end = results.at(-1) as PromiseFulfilledResult<pg.QueryResult>;
      if (end.value.command !== "COMMIT") throw new Error(`the transaction ended in ${end.value.command}`);
    } catch (err) {
      if (!this.lost && connectionBroke(err)) this.lost = err as Error;
      throw this.lost ? this.lostError() : err;
    }
  }

  private lostError(): Error {
    return new Error(`lost the connection to ${this.description} (${this.lost!.message})`, { cause: this.lost });
  }

  async loadWorkingSet(pendingPerSession: number): Promise<WorkingSet> {
    const q = WORKING_SET_QUERIES;
    const all = async <T extends pg.QueryResultRow>(sql: string) => (await this.readers.query<T>(sql)).rows;
    const [applications, events, sessions, ids, submissions, nodes] = await Promise.all([
      all<ApplicationRow>(q.applications),
      all<EventRow>(q.events),
      all<SessionRow>(q.sessions),
      this.readers.query<[string, number]>({ text: q.unfinishedIds, rowMode: "array" }),
      all<SubmissionRow>(q.submissions),
      all<{ name: string }>(q.nodes),
    ]);
    const { firstThrough, backlog } = unfinishedSpans(ids.rows, pendingPerSession);
    const first = await Promise.all(
      [...firstThrough].map(([sessionId, lastId]) =>
        this.listTasks(sessionId, { afterId: 0, throughId: lastId, limit: pendingPerSession, unfinishedOnly: true }),
      ),
    );
    return {
      applications: applications.map(applicationFromRow),
      sessions: sessionsFromRows(sessions, events),
      tasks: first.flat(),
      backlog,
      submissions: submissions.map(submissionFromRow),
      nodes: nodes.map((r) => r.name),
    };
  }

  async getTask(sessionId: string, id: number): Promise<StoredTask | undefined> {
    const { rows } = await this.readers.query<TaskRow>({
      name: "getTask",
      text: "SELECT * FROM tasks WHERE session_id = $1 AND id = $2",
      values: [sessionId, id],
    });
    return rows[0] && taskFromRow(rows[0]);
  }

  async listTasks(sessionId: string, page: TaskPage): Promise<StoredTask[]> {
    const through = page.throughId ?? Number.MAX_SAFE_INTEGER;
    const { rows } = await this.readers.query<TaskRow>(
      page.unfinishedOnly
        ? {
            name: "listUnfinishedTasks",
            // The condition is the partial index's (tasks_unfinished).
            text: "SELECT * FROM tasks WHERE session_id = $1 AND id > $2 AND id <= $3 AND state < 2 ORDER BY id LIMIT $4",
            values: [sessionId, page.afterId, through, page.limit],
          }
        : {
            name: "listTasks",
            text: "SELECT * FROM tasks WHERE session_id = $1 AND id > $2 AND id <= $3 AND seq > $4 ORDER BY id LIMIT $5",
            values: [sessionId, page.afterId, through, page.changedAfter ?? -1, page.limit],
          },
    );
    return rows.map(taskFromRow);
  }

  async close(): Promise<void> {
    // Ending the writer's connection lets go of the owner lock.
    await Promise.all([this.writer.end().catch(() => undefined), this.readers.end().catch(() => undefined)]);
  }
}

/**
 * Whether a failed statement means the connection is gone: an error of the socket (ECONNRESET, "Connection
 * terminated"), or a server error of class 08 (connection exception) or 57 (operator intervention: the
 * server shutting down, the session terminated). Anything else is a statement's own failure, the connection still usable.
 */
function connectionBroke(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (err instanceof pg.DatabaseError)
    return typeof code === "string" && (code.startsWith("08") || code.startsWith("57"));
  return (typeof code === "string" && code.startsWith("E")) || /connection terminated|not queryable/i.test(String(err));
}

function unreachable(target: PostgresTarget, err: unknown): Error {
  const reason = (err as { code?: string }).code ?? (err as Error).message;
  return new KilnError(
    ErrorCode.Unavailable,
    `could not reach PostgreSQL at ${target.host}:${target.port} (database ${target.database}): ${reason}`,
  );
}

/**
 * Takes the owner lock on the writer's connection, waiting up to OWNER_LOCK_WAIT_MS for a control plane
 * that is stopping to let go (its lock goes with its connection). lock_timeout bounds the wait.
 */
async function takeOwnerLock(writer: pg.Client, description: string): Promise<void> {
  await writer.query(`SET lock_timeout = ${OWNER_LOCK_WAIT_MS}`);
  try {
    await writer.query(`SELECT pg_advisory_lock(${OWNER_LOCK_KEY})`);
  } catch (err) {
    // 55P03: lock_not_available, the wait ran out.
    if ((err as { code?: string }).code === "55P03")
      throw new FailedPreconditionError(
        `${description} is in use by another control plane (one database serves one control plane)`,
      );
    throw err;
  } finally {
    await writer.query("RESET lock_timeout");
  }
}

async function migrate(writer: pg.Client): Promise<void> {
  await writer.query("CREATE TABLE IF NOT EXISTS kiln_schema (version integer NOT NULL)");
  const { rows } = await writer.query<{ version: number }>("SELECT version FROM kiln_schema");
  const current = rows[0]?.version ?? 0;
  if (current > POSTGRES_MIGRATIONS.length)
    throw new FailedPreconditionError(
      `the store's schema is version ${current}, newer than this Kiln knows (${POSTGRES_MIGRATIONS.length}): run the Kiln that wrote it, or a newer one`,
    );
  for (let v = current; v < POSTGRES_MIGRATIONS.length; v++) {
    await writer.query("BEGIN");
    try {
      await writer.query(POSTGRES_MIGRATIONS[v]!);
      await writer.query("DELETE FROM kiln_schema");
      await writer.query("INSERT INTO kiln_schema (version) VALUES ($1)", [v + 1]);
      await writer.query("COMMIT");
    } catch (err) {
      await writer.query("ROLLBACK").catch(() => undefined);
      throw err;
    }
  }
}
