/**
 * Versioned schema migrations. PRAGMA user_version records how many have run;
 * a migration is never edited once released, only followed by a new one.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: initial schema
  `
  CREATE TABLE applications (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    state INTEGER NOT NULL,
    creation_time INTEGER NOT NULL
  );
  CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    application TEXT NOT NULL,
    spec BLOB NOT NULL,
    state INTEGER NOT NULL,
    creation_time INTEGER NOT NULL,
    completion_time INTEGER
  );
  CREATE TABLE session_events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    code INTEGER NOT NULL,
    message TEXT,
    time INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
  );
  CREATE TABLE tasks (
    session_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    state INTEGER NOT NULL,
    input BLOB,
    output BLOB,
    message TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    creation_time INTEGER NOT NULL,
    completion_time INTEGER,
    events TEXT NOT NULL,
    PRIMARY KEY (session_id, id)
  );
  `,
  // 2: submission keys (idempotent CreateTasks) and the nodes a restarted control plane waits for
  `
  CREATE TABLE submissions (
    session_id TEXT NOT NULL,
    key TEXT NOT NULL,
    first_task_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    time INTEGER NOT NULL,
    PRIMARY KEY (session_id, key)
  );
  CREATE INDEX submissions_by_time ON submissions (time);
  CREATE TABLE nodes (
    name TEXT PRIMARY KEY
  );
  `,
  // 3: the working set. Finished tasks stay on disk: a session's counts and last change number are kept on
  // its row, each task has the change number a resuming watcher asks by, and unfinished tasks (all
  // start-up reads of tasks) have an index of their own.
  `
  ALTER TABLE sessions ADD COLUMN task_count INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN succeed INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE tasks ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
  UPDATE sessions SET
    task_count = (SELECT coalesce(max(id), 0) FROM tasks WHERE session_id = sessions.id),
    succeed = (SELECT count(*) FROM tasks WHERE session_id = sessions.id AND state = 2),
    failed = (SELECT count(*) FROM tasks WHERE session_id = sessions.id AND state = 3),
    cancelled = (SELECT count(*) FROM tasks WHERE session_id = sessions.id AND state = 4);
  UPDATE tasks SET seq = id;
  UPDATE sessions SET last_seq = task_count;
  CREATE INDEX tasks_unfinished ON tasks (session_id, id) WHERE state < 2;
  `,
  // 4: the watcher key a task's outputs go to (CreateTasksRequest.output_to), kept so a watcher that
  // resumes after a restart still gets only its own tasks' outputs.
  `
  ALTER TABLE tasks ADD COLUMN output_to TEXT;
  `,
];
