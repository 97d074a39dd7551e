/**
 * Versioned schema migrations of the PostgreSQL store: the tables of the SQLite store's migrations
 * (sqlite-migrations.ts) as they stand after all of them, in PostgreSQL's types (bytea for blobs, bigint
 * for times and counters). The one row of kiln_schema records how many have run; a migration is never
 * edited once released, only followed by a new one.
 */
export const POSTGRES_MIGRATIONS: readonly string[] = [
  // 1: the schema of SQLite migrations 1 to 3 (applications, sessions with their progress counters,
  // session events, tasks with their change number, submission keys, nodes)
  `
  CREATE TABLE applications (
    name text PRIMARY KEY,
    spec bytea NOT NULL,
    state integer NOT NULL,
    creation_time bigint NOT NULL
  );
  CREATE TABLE sessions (
    id text PRIMARY KEY,
    application text NOT NULL,
    spec bytea NOT NULL,
    state integer NOT NULL,
    creation_time bigint NOT NULL,
    completion_time bigint,
    task_count bigint NOT NULL DEFAULT 0,
    succeed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    last_seq bigint NOT NULL DEFAULT 0
  );
  CREATE TABLE session_events (
    session_id text NOT NULL,
    seq bigint NOT NULL,
    code integer NOT NULL,
    message text,
    time bigint NOT NULL,
    PRIMARY KEY (session_id, seq)
  );
  CREATE TABLE tasks (
    session_id text NOT NULL,
    id bigint NOT NULL,
    state integer NOT NULL,
    input bytea,
    output bytea,
    message text,
    attempt integer NOT NULL DEFAULT 0,
    retries integer NOT NULL DEFAULT 0,
    creation_time bigint NOT NULL,
    completion_time bigint,
    seq bigint NOT NULL DEFAULT 0,
    events text NOT NULL,
    PRIMARY KEY (session_id, id)
  );
  CREATE INDEX tasks_unfinished ON tasks (session_id, id) WHERE state < 2;
  CREATE TABLE submissions (
    session_id text NOT NULL,
    key text NOT NULL,
    first_task_id bigint NOT NULL,
    count bigint NOT NULL,
    time bigint NOT NULL,
    PRIMARY KEY (session_id, key)
  );
  CREATE INDEX submissions_by_time ON submissions (time);
  CREATE TABLE nodes (
    name text PRIMARY KEY
  );
  `,
  // 2: the watcher key a task's outputs go to (CreateTasksRequest.output_to), as SQLite's migration 4.
  `
  ALTER TABLE tasks ADD COLUMN output_to text;
  `,
];
