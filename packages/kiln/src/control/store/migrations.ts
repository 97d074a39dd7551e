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
];
