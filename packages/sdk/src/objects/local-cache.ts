/**
 * The encoded bytes of objects this client has read or written, so a later
 * read can ask the server for only what changed. Entries hold bytes, not
 * decoded values: every read decodes afresh, so a caller mutating what it
 * got cannot change what the next caller gets.
 */

/** One version of an object: its base and the deltas after it, in version order. Never mutated once stored. */
export interface CachedObject {
  version: number;
  sha256: string;
  base: Uint8Array;
  deltas: Uint8Array[];
  /** base + deltas, bytes. */
  size: number;
}

/**
 * A byte-bounded LRU of objects keyed by endpoint and key.
 *
 * @example
 * const cache = new LocalObjectCache(64 * 1024 * 1024);
 * cache.set("http://127.0.0.1:7422", "app/s1/x", { version: 1, sha256, base, deltas: [], size: base.length });
 * cache.get("http://127.0.0.1:7422", "app/s1/x")?.version // 1
 */
export class LocalObjectCache {
  // A Map iterates in insertion order: re-inserting on use keeps the least recent first.
  private readonly entries = new Map<string, CachedObject>();
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  get(endpoint: string, key: string): CachedObject | undefined {
    const id = entryId(endpoint, key);
    const entry = this.entries.get(id);
    if (entry) {
      this.entries.delete(id);
      this.entries.set(id, entry);
    }
    return entry;
  }

  /** Keeps `entry` unless it alone is over the budget (then any older copy is dropped too). */
  set(endpoint: string, key: string, entry: CachedObject): void {
    this.delete(endpoint, key);
    if (entry.size > this.maxBytes) return;
    this.entries.set(entryId(endpoint, key), { ...entry, base: owned(entry.base), deltas: entry.deltas.map(owned) });
    this.bytes += entry.size;
    for (const [id, old] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(id);
      this.bytes -= old.size;
    }
  }

  /** Adds a delta to the held version `fromVersion`; anything else held is left for revalidation. */
  append(endpoint: string, key: string, fromVersion: number, delta: Uint8Array, version: number, sha256: string): void {
    const entry = this.entries.get(entryId(endpoint, key));
    if (!entry || entry.version !== fromVersion) return;
    this.set(endpoint, key, {
      version,
      sha256,
      base: entry.base,
      deltas: [...entry.deltas, delta],
      size: entry.size + delta.byteLength,
    });
  }

  delete(endpoint: string, key: string): void {
    const id = entryId(endpoint, key);
    const entry = this.entries.get(id);
    if (!entry) return;
    this.entries.delete(id);
    this.bytes -= entry.size;
  }

  /** Drops every key under `prefix` (`app/session/` or `app/`) on `endpoint`. */
  deletePrefix(endpoint: string, prefix: string): void {
    const start = entryId(endpoint, prefix);
    for (const [id, entry] of this.entries) {
      if (!id.startsWith(start)) continue;
      this.entries.delete(id);
      this.bytes -= entry.size;
    }
  }

  /** Bytes held. */
  get size(): number {
    return this.bytes;
  }
}

/**
 * The bytes in a buffer of their own: a small view of a large buffer (a
 * socket read holding several responses) would keep all of it alive and
 * make the byte budget a fiction.
 */
function owned(bytes: Uint8Array): Uint8Array {
  return bytes.byteLength * 2 < bytes.buffer.byteLength ? bytes.slice() : bytes;
}

function entryId(endpoint: string, key: string): string {
  // A space cannot occur in an endpoint URL or a key.
  return `${endpoint} ${key}`;
}
