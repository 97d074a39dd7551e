import type { ObjectStat } from "@kiln/sdk";
import type { BlobFiles } from "./blob-files.js";
import type { DiskQuota, ReceivedBody } from "./body-sink.js";

/** What `GET /v1/stat/<key>` returns: the SDK's type, so client and server cannot drift apart. */
export type { ObjectStat };

/** Where a segment's bytes are: in memory, or in a blob file (path is absolute). */
export type SegmentBytes = { kind: "memory"; data: Buffer } | { kind: "file"; name: string; path: string };

/**
 * Consecutive parts stored together: the base alone, one delta, or several
 * deltas folded by compaction. Part i has version firstVersion + i.
 */
export interface Segment {
  firstVersion: number;
  lengths: number[];
  bytes: SegmentBytes;
}

export interface StoredObject {
  stat: ObjectStat;
  /** The base segment first, then the delta segments in version order. */
  segments: Segment[];
}

/** How an incoming body is kept while it arrives. */
export interface BodyTarget {
  /** Bodies up to this many bytes stay in memory; larger ones go to a temp file. */
  memoryLimit: number;
  files: BlobFiles;
  /** fsync temp files before they are adopted. */
  sync: boolean;
  quota?: DiskQuota;
}

/**
 * Persistence of one backend kind. The object store above it owns the
 * rules (versions, preconditions, hashing, per-key ordering, compaction);
 * a catalog only keeps objects and hands them back. Every method that
 * takes a ReceivedBody takes ownership of it, also when it throws.
 */
export interface Catalog {
  readonly kind: "fs" | "memory";
  bodyTarget(expectedLength: number | undefined): BodyTarget;
  stat(key: string): ObjectStat | undefined;
  /** The object with its segments; file segments stay readable until `release` is called. */
  open(key: string): { object: StoredObject; release(): void } | undefined;
  /**
   * Makes `body` the key's whole content (new or replacing). `decide` runs
   * atomically with the write: it gets the current stat and returns the new
   * one, or throws to refuse (then nothing changes).
   */
  setBase(
    key: string,
    body: ReceivedBody,
    decide: (previous: ObjectStat | undefined) => ObjectStat,
  ): Promise<ObjectStat>;
  /**
   * Appends one delta and returns how many delta segments the object now has;
   * undefined (and nothing changes) when the object is no longer at `fromVersion`.
   */
  appendDelta(stat: ObjectStat, fromVersion: number, body: ReceivedBody): Promise<number | undefined>;
  /**
   * Replaces all delta segments with one holding the same parts (`lengths`, in version order);
   * false (and nothing changes) when the object is no longer at `version`.
   */
  replaceDeltas(key: string, version: number, lengths: number[], body: ReceivedBody): Promise<boolean>;
  deleteKey(key: string): Promise<boolean>;
  /** Deletes every key starting with `prefix` (which ends with "/"); returns how many. */
  deletePrefix(prefix: string): Promise<number>;
  /** Keys starting with `prefix` (ending with "/"), greater than `after`, sorted, at most `limit`. */
  list(prefix: string, after: string | undefined, limit: number): ObjectStat[];
  close(): Promise<void>;
}
