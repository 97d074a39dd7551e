import { FailedPreconditionError } from "@kiln/protocol";
import Database from "better-sqlite3";

/**
 * Opens a SQLite file that one process owns (the control plane's store, the
 * cache's catalog) in WAL mode with exclusive locking: the WAL index lives in
 * the process's memory instead of a shared-memory file locked on every
 * transaction, and a second process opening the file is refused with
 * FailedPreconditionError naming it (`owner` says who holds it).
 * `busyTimeoutMs` is how long to wait for a previous owner to let go.
 *
 * @example
 * const db = openOwnedDatabase("/var/lib/kiln/kiln.db", "another control plane", 5_000);
 */
export function openOwnedDatabase(file: string, owner: string, busyTimeoutMs: number): Database.Database {
  const db = new Database(file, { timeout: busyTimeoutMs });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    db.pragma("journal_mode = WAL");
    return db;
  } catch (err) {
    db.close();
    if ((err as { code?: string }).code === "SQLITE_BUSY")
      throw new FailedPreconditionError(`${file} is in use by ${owner}`);
    throw err;
  }
}

/** Writes that pause this long count as a pause (see IdleCheckpoints). */
const IDLE_CHECKPOINT_MS = 200;
/** Past this many WAL pages (64 MiB) SQLite checkpoints inside a commit all the same. */
const WAL_CHECKPOINT_PAGES = 16_384;

/**
 * Moves WAL checkpoints out of commits. By default SQLite copies the WAL into
 * the database inside whichever commit crosses 1000 pages, and that
 * checkpoint fsyncs twice: the single-threaded server stood still for it
 * every few thousand small writes (a stall at the p99 of a Runner call).
 * Here a checkpoint runs once writes pause, and inside a commit only once
 * the WAL reaches 64 MiB. Call `wrote()` after each commit.
 *
 * @example
 * const checkpoints = new IdleCheckpoints(db);
 * db.transaction(write)(); checkpoints.wrote();
 * checkpoints.stop(); db.close(); // closing checkpoints anyway
 */
export class IdleCheckpoints {
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly db: Database.Database) {
    db.pragma(`wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES}`);
    this.timer = setTimeout(() => this.checkpoint(), IDLE_CHECKPOINT_MS).unref();
  }

  wrote(): void {
    this.timer.refresh();
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private checkpoint(): void {
    try {
      this.db.pragma("wal_checkpoint(PASSIVE)");
    } catch {
      // A disk fault: the next commit meets it too and reports it to its writer; the WAL keeps every write.
    }
  }
}
