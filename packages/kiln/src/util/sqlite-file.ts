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

/** auto_vacuum's value for INCREMENTAL. */
const AUTO_VACUUM_INCREMENTAL = 2;
/** Pages given back to the file system per turn of the event loop (16 MiB of 4 KiB pages: milliseconds). */
const VACUUM_PAGES_PER_TURN = 4_096;
/** Giving back at least this many pages (4 MiB) counts as a large delete: the WAL is cut back at once. */
const LARGE_DELETE_PAGES = 1_024;
/** What SQLite cuts the WAL file back to when it starts it over after a checkpoint (it otherwise stays at its largest). */
const JOURNAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024;

/**
 * Sets auto_vacuum = INCREMENTAL, so the pages that deletes free can be given back to the file system
 * (see SpaceReclaimer) instead of only being reused. A new file takes it before its first table; a
 * file made without it needs one VACUUM, which rewrites the whole file (once, at the first open:
 * about as long as copying the file, with as much free disk space again).
 */
export function useIncrementalVacuum(db: Database.Database): void {
  if (db.pragma("auto_vacuum", { simple: true }) === AUTO_VACUUM_INCREMENTAL) return;
  db.pragma("auto_vacuum = INCREMENTAL");
  db.exec("VACUUM");
}

/**
 * Gives the pages freed by deletes back to the file system and keeps the WAL bounded: after a commit
 * that deleted rows, `reclaim()` runs `PRAGMA incremental_vacuum` a bounded number of pages per turn
 * (so a large delete never holds the event loop for long) until no free page is left. A large delete
 * then ends with a TRUNCATE checkpoint, so the database file shrinks and the WAL is emptied at once;
 * smaller ones shrink at the next idle checkpoint (IdleCheckpoints), with journal_size_limit cutting
 * the WAL back. Needs auto_vacuum = INCREMENTAL (useIncrementalVacuum).
 *
 * @example
 * const reclaimer = new SpaceReclaimer(db);
 * db.transaction(deleteRows)(); reclaimer.reclaim();
 */
export class SpaceReclaimer {
  private scheduled: NodeJS.Immediate | undefined;
  /** Pages given back since the last run ended. */
  private given = 0;

  constructor(private readonly db: Database.Database) {
    db.pragma(`journal_size_limit = ${JOURNAL_SIZE_LIMIT_BYTES}`);
  }

  reclaim(): void {
    this.scheduled ??= setImmediate(() => this.step());
  }

  stop(): void {
    clearImmediate(this.scheduled);
    this.scheduled = undefined;
  }

  private step(): void {
    this.scheduled = undefined;
    try {
      const free = this.db.pragma("freelist_count", { simple: true }) as number;
      if (free > 0) {
        this.db.pragma(`incremental_vacuum(${VACUUM_PAGES_PER_TURN})`);
        this.given += Math.min(free, VACUUM_PAGES_PER_TURN);
        if (free > VACUUM_PAGES_PER_TURN) return this.reclaim();
      }
      if (this.given >= LARGE_DELETE_PAGES) this.db.pragma("wal_checkpoint(TRUNCATE)");
    } catch {
      // A disk fault: the next commit meets it too and reports it to its writer; the free pages wait.
    }
    this.given = 0;
  }
}
