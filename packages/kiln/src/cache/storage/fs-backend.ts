import { ErrorCode, KilnError } from "@kiln/protocol";
import Database from "better-sqlite3";
import * as fs from "node:fs";
import * as path from "node:path";
import type { BodyTarget, Catalog, ObjectStat, Segment, SegmentBytes, StoredObject } from "./backend.js";
import { IdleCheckpoints, openOwnedDatabase } from "../../util/sqlite-file.js";
import { BlobFiles } from "./blob-files.js";
import type { ReceivedBody } from "./body-sink.js";

export interface FsStorageOptions {
  kind: "fs";
  dir: string;
  /**
   * "normal" (default): survives a crash or kill of the server. "full": also
   * survives power loss (fsync of blob files, their directory and every commit).
   */
  durability?: "normal" | "full";
}

/** Like the control plane's default: survives a crash of the process, not of the machine (see docs/cache-api.md). */
export const DEFAULT_DURABILITY = "normal";

/** Bodies up to this size live inside the database: one commit instead of a file, a rename and their syscalls. */
export const INLINE_LIMIT = 64 * 1024;

const SCHEMA_VERSION = 1;
const SCHEMA = `
CREATE TABLE IF NOT EXISTS objects (
  key TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  base_version INTEGER NOT NULL,
  base_size INTEGER NOT NULL,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  base_data BLOB,
  base_file TEXT
);
CREATE TABLE IF NOT EXISTS deltas (
  key TEXT NOT NULL,
  first_version INTEGER NOT NULL,
  lengths TEXT NOT NULL,
  data BLOB,
  file TEXT,
  PRIMARY KEY (key, first_version)
);`;

const STAT_COLUMNS = "key, version, base_version, size, sha256, created_at, updated_at";

interface StatRow {
  key: string;
  version: number;
  base_version: number;
  size: number;
  sha256: string;
  created_at: number;
  updated_at: number;
}

interface BaseRow extends StatRow {
  base_size: number;
  base_data: Buffer | null;
  base_file: string | null;
}

interface DeltaRow {
  first_version: number;
  lengths: string;
  data: Buffer | null;
  file: string | null;
}

interface StoredBytes {
  data: Buffer | null;
  file: string | null;
}

interface Outcome {
  ok: boolean;
  value: unknown;
}

interface Pending {
  mutation(): unknown;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

/**
 * The `fs` backend: objects in `<dir>/cache.db` (SQLite, WAL), bodies over
 * INLINE_LIMIT in `<dir>/blobs/` (written as `<dir>/tmp/` files, then
 * renamed). A file body is complete under its final name before the commit
 * that references it, and the commit is what makes a write visible, so a
 * crash at any point leaves the old version or the new one. Writes made in
 * one event-loop turn share one commit. Everything survives a restart.
 */
export class FsCatalog implements Catalog {
  readonly kind = "fs";
  private readonly db: Database.Database;
  private readonly files: BlobFiles;
  private readonly sync: boolean;
  private readonly stmts;
  private pending: Pending[] = [];
  private scheduled = false;
  private closed = false;
  private readonly checkpoints: IdleCheckpoints;

  constructor(options: FsStorageOptions) {
    fs.mkdirSync(options.dir, { recursive: true });
    this.sync = (options.durability ?? DEFAULT_DURABILITY) === "full";
    // The database lock comes first: only its owner may clean tmp/ and blobs/.
    this.db = openOwnedDatabase(path.join(options.dir, "cache.db"), "another cache server", 0);
    try {
      this.db.pragma(`synchronous = ${this.sync ? "FULL" : "NORMAL"}`);
      const found = this.db.pragma("user_version", { simple: true }) as number;
      if (found > SCHEMA_VERSION)
        throw new Error(`${options.dir}/cache.db has schema ${found}; this kiln knows up to ${SCHEMA_VERSION}`);
      this.db.exec(SCHEMA);
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } catch (err) {
      this.db.close();
      throw err;
    }
    this.files = new BlobFiles(options.dir);
    const db = this.db;
    this.stmts = {
      stat: db.prepare<[string], StatRow>(`SELECT ${STAT_COLUMNS} FROM objects WHERE key = ?`),
      base: db.prepare<[string], BaseRow>(
        `SELECT ${STAT_COLUMNS}, base_size, base_data, base_file FROM objects WHERE key = ?`,
      ),
      previous: db.prepare<[string], StatRow & { base_file: string | null }>(
        `SELECT ${STAT_COLUMNS}, base_file FROM objects WHERE key = ?`,
      ),
      deltas: db.prepare<[string], DeltaRow>(
        "SELECT first_version, lengths, data, file FROM deltas WHERE key = ? ORDER BY first_version",
      ),
      // Positional parameters: binding them measured cheaper than named ones on this, the write path.
      upsert: db.prepare<
        [string, number, number, number, number, string, number, number, Buffer | null, string | null]
      >(
        `INSERT INTO objects (key, version, base_version, base_size, size, sha256, created_at, updated_at, base_data, base_file)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (key) DO UPDATE SET version = excluded.version, base_version = excluded.base_version,
           base_size = excluded.base_size, size = excluded.size, sha256 = excluded.sha256,
           updated_at = excluded.updated_at, base_data = excluded.base_data, base_file = excluded.base_file`,
      ),
      advance: db.prepare(
        "UPDATE objects SET version = @version, size = @size, sha256 = @sha256, updated_at = @updatedAt WHERE key = @key AND version = @from",
      ),
      insertDelta: db.prepare("INSERT INTO deltas (key, first_version, lengths, data, file) VALUES (?, ?, ?, ?, ?)"),
      countDeltas: db.prepare<[string], { n: number }>("SELECT COUNT(*) AS n FROM deltas WHERE key = ?"),
      dropDeltas: db.prepare<[string], { file: string | null }>("DELETE FROM deltas WHERE key = ? RETURNING file"),
      dropObject: db.prepare<[string], { base_file: string | null; version: number; base_version: number }>(
        "DELETE FROM objects WHERE key = ? RETURNING base_file, version, base_version",
      ),
      dropObjectRange: db.prepare<[string, string], { base_file: string | null }>(
        "DELETE FROM objects WHERE key > ? AND key < ? RETURNING base_file",
      ),
      dropDeltaRange: db.prepare<[string, string], { file: string | null }>(
        "DELETE FROM deltas WHERE key > ? AND key < ? RETURNING file",
      ),
      list: db.prepare<[string, string, number], StatRow>(
        `SELECT ${STAT_COLUMNS} FROM objects WHERE key > ? AND key < ? ORDER BY key LIMIT ?`,
      ),
      referenced: db.prepare<[], { file: string }>(
        "SELECT base_file AS file FROM objects WHERE base_file IS NOT NULL UNION ALL SELECT file FROM deltas WHERE file IS NOT NULL",
      ),
      savepoint: db.prepare("SAVEPOINT write"),
      releaseSavepoint: db.prepare("RELEASE write"),
      rollbackSavepoint: db.prepare("ROLLBACK TO write"),
    };
    this.files.removeOrphans(new Set(this.stmts.referenced.all().map((r) => r.file)));
    this.checkpoints = new IdleCheckpoints(this.db);
  }

  bodyTarget(): BodyTarget {
    return { memoryLimit: INLINE_LIMIT, files: this.files, sync: this.sync };
  }

  stat(key: string): ObjectStat | undefined {
    const row = this.stmts.stat.get(key);
    return row && toStat(row);
  }

  open(key: string): { object: StoredObject; release(): void } | undefined {
    const row = this.stmts.base.get(key);
    if (!row) return undefined;
    const segments: Segment[] = [
      { firstVersion: row.base_version, lengths: [row.base_size], bytes: this.bytes(row.base_data, row.base_file) },
    ];
    if (row.version > row.base_version) {
      for (const d of this.stmts.deltas.all(key))
        segments.push({
          firstVersion: d.first_version,
          lengths: JSON.parse(d.lengths),
          bytes: this.bytes(d.data, d.file),
        });
    }
    const object = { stat: toStat(row), segments };
    const pinned = segments.flatMap((s) => (s.bytes.kind === "file" ? [s.bytes.name] : []));
    for (const name of pinned) this.files.acquire(name);
    return {
      object,
      release: () => {
        for (const name of pinned) this.files.release(name);
      },
    };
  }

  async setBase(
    key: string,
    body: ReceivedBody,
    decide: (previous: ObjectStat | undefined) => ObjectStat,
  ): Promise<ObjectStat> {
    const stored = await this.store(body);
    const { stat, dropped } = await this.commitOrRetire(stored, () => {
      const previous = this.stmts.previous.get(key);
      const stat = decide(previous && toStat(previous));
      const { data, file } = stored;
      this.stmts.upsert.run(
        stat.key,
        stat.version,
        stat.baseVersion,
        stat.size,
        stat.size,
        stat.sha256,
        stat.createdAt,
        stat.updatedAt,
        data,
        file,
      );
      if (!previous) return { stat, dropped: [] };
      const deltas = previous.version > previous.base_version ? this.stmts.dropDeltas.all(key) : [];
      return { stat, dropped: [previous.base_file, ...deltas.map((f) => f.file)] };
    });
    this.retire(dropped);
    return stat;
  }

  async appendDelta(stat: ObjectStat, fromVersion: number, body: ReceivedBody): Promise<number | undefined> {
    const stored = await this.store(body);
    const count = await this.commitOrRetire(stored, () => {
      if (this.stmts.advance.run({ ...stat, from: fromVersion }).changes === 0) return undefined;
      this.stmts.insertDelta.run(stat.key, stat.version, JSON.stringify([body.size]), stored.data, stored.file);
      return this.stmts.countDeltas.get(stat.key)!.n;
    });
    if (count === undefined && stored.file) this.files.retire(stored.file);
    return count;
  }

  async replaceDeltas(key: string, version: number, lengths: number[], body: ReceivedBody): Promise<boolean> {
    const stored = await this.store(body);
    const dropped = await this.commitOrRetire(stored, () => {
      const row = this.stmts.stat.get(key);
      if (!row || row.version !== version) return undefined;
      const files = this.stmts.dropDeltas.all(key).map((f) => f.file);
      this.stmts.insertDelta.run(key, row.base_version + 1, JSON.stringify(lengths), stored.data, stored.file);
      return files;
    });
    if (dropped === undefined) {
      if (stored.file) this.files.retire(stored.file);
      return false;
    }
    this.retire(dropped);
    return true;
  }

  async deleteKey(key: string): Promise<boolean> {
    const dropped = await this.commit(() => {
      const row = this.stmts.dropObject.get(key);
      if (!row) return undefined;
      const files = row.version > row.base_version ? this.stmts.dropDeltas.all(key) : [];
      return [row.base_file, ...files.map((f) => f.file)];
    });
    if (!dropped) return false;
    this.retire(dropped);
    return true;
  }

  async deletePrefix(prefix: string): Promise<number> {
    const [low, high] = prefixRange(prefix);
    const { count, files } = await this.commit(() => {
      const objects = this.stmts.dropObjectRange.all(low, high);
      const deltas = this.stmts.dropDeltaRange.all(low, high);
      return { count: objects.length, files: [...objects.map((o) => o.base_file), ...deltas.map((d) => d.file)] };
    });
    this.retire(files);
    return count;
  }

  list(prefix: string, after: string | undefined, limit: number): ObjectStat[] {
    const [low, high] = prefixRange(prefix);
    return this.stmts.list.all(after !== undefined && after > low ? after : low, high, limit).map(toStat);
  }

  async close(): Promise<void> {
    this.flush();
    // Writes still receiving their bodies reach commit() later, and are refused there.
    this.closed = true;
    // After the flush, which re-arms it; closing the database checkpoints anyway.
    this.checkpoints.stop();
    this.db.close();
  }

  private bytes(data: Buffer | null, file: string | null): SegmentBytes {
    return file ? { kind: "file", name: file, path: this.files.path(file) } : { kind: "memory", data: data! };
  }

  /** Puts a received body where a row can reference it: inline, or a blob file under its final name. */
  private async store(body: ReceivedBody): Promise<StoredBytes> {
    if (body.content.kind === "memory") return { data: body.content.data, file: null };
    try {
      return { data: null, file: (await this.files.adopt(body.content.tempPath, this.sync)).name };
    } catch (err) {
      await body.discard();
      throw err;
    }
  }

  private async commitOrRetire<T>(stored: StoredBytes, mutation: () => T): Promise<T> {
    try {
      return await this.commit(mutation);
    } catch (err) {
      if (stored.file) this.files.retire(stored.file);
      throw err;
    }
  }

  private retire(files: (string | null)[]): void {
    for (const f of files) if (f) this.files.retire(f);
  }

  /**
   * Runs `mutation` in the transaction of this event-loop turn and resolves
   * once that transaction has committed. A mutation that throws is rolled
   * back alone; the others still commit.
   */
  private commit<T>(mutation: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new KilnError(ErrorCode.Unavailable, "the object cache is shutting down"));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ mutation, resolve: resolve as (value: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    let outcomes: Outcome[];
    try {
      outcomes = this.db.transaction(() => batch.map((p): Outcome => ({ ok: true, value: p.mutation() })))();
    } catch {
      // Rare (a failed precondition, say): run them again, each alone in a savepoint. Mutations read
      // what they change, so running one again is safe; the fast path above spares every write the
      // two savepoint statements.
      try {
        outcomes = this.db.transaction(() => batch.map((p) => this.isolated(p)))();
      } catch (err) {
        for (const p of batch) p.reject(err);
        return;
      }
    }
    this.checkpoints.wrote();
    batch.forEach((p, i) => (outcomes[i]!.ok ? p.resolve(outcomes[i]!.value) : p.reject(outcomes[i]!.value)));
  }

  private isolated(p: Pending): Outcome {
    this.stmts.savepoint.run();
    try {
      const value = p.mutation();
      this.stmts.releaseSavepoint.run();
      return { ok: true, value };
    } catch (err) {
      this.stmts.rollbackSavepoint.run();
      this.stmts.releaseSavepoint.run();
      return { ok: false, value: err };
    }
  }
}

/**
 * One server owns a cache directory: exclusive locking makes a second one
 * fail at start, and spares every read the shared-memory lock calls that WAL
 * mode otherwise makes (measured: a third of a small read's cost).
 */
function toStat(row: StatRow): ObjectStat {
  return {
    key: row.key,
    version: row.version,
    size: row.size,
    sha256: row.sha256,
    baseVersion: row.base_version,
    deltas: row.version - row.base_version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** Keys under "app/" sort strictly between "app/" and "app0" ("0" follows "/" in ASCII). */
function prefixRange(prefix: string): [string, string] {
  return [prefix, `${prefix.slice(0, -1)}0`];
}
