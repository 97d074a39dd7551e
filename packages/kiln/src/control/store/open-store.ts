import { InvalidArgumentError } from "@kiln/protocol";
import * as path from "node:path";
import { PostgresStore, type PostgresTarget } from "./postgres-store.js";
import { SqliteStore } from "./sqlite-store.js";
import type { Durability, Store } from "./store.js";

const STORE_RULE =
  "must be a PostgreSQL URL, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (leave --store out for the SQLite file in the data dir)";
const DEFAULT_POSTGRES_PORT = 5432;

/**
 * Opens the control plane's store: without `store`, the SQLite file in `dataDir`; with a postgres:// (or
 * postgresql://) URL, that PostgreSQL database. Anything else is refused with InvalidArgumentError before
 * anything is opened or created.
 *
 * @example
 * const store = await openStore("postgres://kiln@db.internal/kiln", "/var/lib/kiln", "normal");
 */
export async function openStore(store: string | undefined, dataDir: string, durability: Durability): Promise<Store> {
  if (store === undefined) return SqliteStore.open(path.join(dataDir, "kiln.db"), durability);
  // synchronous_commit (PostgreSQL's default) makes every acknowledged commit survive power loss: `durability` is met.
  return PostgresStore.open(parseStoreUrl(store));
}

/** The parts of a `--store` URL, or an InvalidArgumentError naming --store and the rule (never echoing a password). */
export function parseStoreUrl(store: string): PostgresTarget {
  let url: URL;
  try {
    url = new URL(store);
  } catch {
    throw new InvalidArgumentError("store", `${JSON.stringify(redactPassword(store))} (--store) ${STORE_RULE}`);
  }
  const shown = JSON.stringify(redactPassword(store));
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:")
    throw new InvalidArgumentError("store", `${shown} (--store) ${STORE_RULE}`);
  if (url.hostname === "")
    throw new InvalidArgumentError("store", `${shown} (--store) names no host: it ${STORE_RULE}`);
  const database = decodeURIComponent(url.pathname.replace(/^\//, ""));
  if (database === "" || database.includes("/"))
    throw new InvalidArgumentError("store", `${shown} (--store) names no database: it ${STORE_RULE}`);
  return {
    // new URL keeps an IPv6 address in brackets; the driver wants it bare.
    host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: url.port === "" ? DEFAULT_POSTGRES_PORT : Number(url.port),
    database,
    ...(url.username !== "" ? { user: decodeURIComponent(url.username) } : {}),
    ...(url.password !== "" ? { password: decodeURIComponent(url.password) } : {}),
  };
}

/** The URL with its password (if any) replaced by `***`, for messages. */
export function redactPassword(store: string): string {
  return store.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, "$1:***@");
}
