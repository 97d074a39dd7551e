/**
 * The store backends every store test runs against: SQLite in a temp dir and PostgreSQL on a server
 * this process starts (support/postgres.ts). A PostgreSQL that is not installed skips its tests with a
 * message saying so (and fails them in CI, see postgresMissing).
 */
import { tempDir } from "./control-plane.js";
import { postgresMissing, startTestPostgres, type TestPostgres } from "./postgres.js";

export interface StoreBackend {
  name: "sqlite" | "postgres";
  /** Why this backend's tests are skipped here, or undefined. */
  skip: string | undefined;
  /** A new, empty store: its `--store` value (undefined for SQLite) and a data dir of its own. */
  fresh(): Promise<{ store: string | undefined; dataDir: string }>;
}

let server: Promise<TestPostgres> | undefined;

/** Both backends; PostgreSQL's server starts at its first fresh() and stops at stopStoreBackends(). */
export function storeBackends(): StoreBackend[] {
  return [
    {
      name: "sqlite",
      skip: undefined,
      fresh: () => Promise.resolve({ store: undefined, dataDir: tempDir("store-sqlite") }),
    },
    {
      name: "postgres",
      skip: postgresMissing(),
      async fresh() {
        server ??= startTestPostgres();
        return { store: await (await server).createDatabase(), dataDir: tempDir("store-pg") };
      },
    },
  ];
}

/** Stops the PostgreSQL server if one was started (call it from after()). */
export async function stopStoreBackends(): Promise<void> {
  const started = server;
  server = undefined;
  if (started) (await started).stop();
}
