import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "@kiln/protocol";
import { chainSha256 } from "@kiln/protocol/cache";
import { createHash } from "node:crypto";
import type { Catalog, ObjectStat, Segment, StoredObject } from "./backend.js";
import { receiveBody, type ReceivedBody } from "./body-sink.js";
import { KeyLock } from "./key-lock.js";
import { readSegment, segmentSize } from "./segments.js";

export interface CompactionOptions {
  /** Delta segments an object may have before they are folded into one (default 64). */
  maxDeltas?: number;
}

export interface WriteRequest {
  key: string;
  /** The body as it arrives, or whole when it is already in memory. */
  body: AsyncIterable<Buffer> | Buffer;
  contentLength?: number;
  /** Expected sha256 (hex) of the body bytes. */
  sha256?: string;
  /** Write only if the current version is this (0 = the key must not exist). */
  ifVersion?: number;
}

export const DEFAULT_MAX_DELTAS = 64;

/**
 * The object cache's rules over a catalog: versions, preconditions,
 * integrity (sha256 of the base, chained through deltas), per-key write
 * ordering and compaction. Backend-independent.
 */
export class ObjectStore {
  private readonly locks = new KeyLock();
  private readonly maxDeltas: number;
  private readonly maxObjectBytes: number | undefined;

  private readonly log: (line: string) => void;

  constructor(
    private readonly catalog: Catalog,
    options: { compaction?: CompactionOptions; maxObjectBytes?: number; log?: (line: string) => void } = {},
  ) {
    this.maxDeltas = Math.max(1, options.compaction?.maxDeltas ?? DEFAULT_MAX_DELTAS);
    this.maxObjectBytes = options.maxObjectBytes;
    this.log = options.log ?? (() => undefined);
  }

  get kind(): "fs" | "memory" {
    return this.catalog.kind;
  }

  /** Creates or replaces `key` with the body as its base (version 1, or previous + 1). */
  async put(req: WriteRequest): Promise<{ stat: ObjectStat; created: boolean }> {
    // Fail before receiving a body that could not be kept anyway.
    if (req.ifVersion !== undefined) checkIfVersion(req.key, req.ifVersion, this.catalog.stat(req.key));
    const body = await receiveBody(req.body, {
      target: this.catalog.bodyTarget(req.contentLength),
      hash: createHash("sha256"),
      expectedLength: req.contentLength,
      maxBytes: this.maxObjectBytes,
    });
    try {
      checkSha256(req.sha256, body.sha256);
    } catch (err) {
      await body.discard();
      throw err;
    }
    const release = await this.locks.acquire(req.key);
    try {
      let created = false;
      const stat = await this.catalog.setBase(req.key, body, (previous) => {
        checkIfVersion(req.key, req.ifVersion, previous);
        created = previous === undefined;
        const now = Date.now();
        const version = (previous?.version ?? 0) + 1;
        return {
          key: req.key,
          version,
          size: body.size,
          sha256: body.sha256,
          baseVersion: version,
          deltas: 0,
          createdAt: previous?.createdAt ?? now,
          updatedAt: now,
        };
      });
      return { stat, created };
    } finally {
      release();
    }
  }

  /** Appends the body as a delta: version + 1, sha256 chained from the previous one. */
  async patch(req: WriteRequest): Promise<ObjectStat> {
    const release = await this.locks.acquire(req.key);
    try {
      const current = this.catalog.stat(req.key);
      if (!current) throw new NotFoundError("object", req.key);
      checkIfVersion(req.key, req.ifVersion, current);
      const body = await receiveBody(req.body, {
        target: this.catalog.bodyTarget(req.contentLength),
        hash: chainSha256(current.sha256),
        bodyHash: req.sha256 === undefined ? undefined : createHash("sha256"),
        expectedLength: req.contentLength,
        maxBytes: this.maxObjectBytes === undefined ? undefined : this.maxObjectBytes - current.size,
      });
      try {
        checkSha256(req.sha256, body.bodySha256);
      } catch (err) {
        await body.discard();
        throw err;
      }
      const stat: ObjectStat = {
        ...current,
        version: current.version + 1,
        size: current.size + body.size,
        sha256: body.sha256,
        deltas: current.deltas + 1,
        updatedAt: Date.now(),
      };
      const deltaSegments = await this.catalog.appendDelta(stat, current.version, body);
      // Deleted while the delta arrived.
      if (deltaSegments === undefined) throw new NotFoundError("object", req.key);
      if (deltaSegments > this.maxDeltas) await this.compact(req.key);
      return stat;
    } finally {
      release();
    }
  }

  stat(key: string): ObjectStat | undefined {
    return this.catalog.stat(key);
  }

  /** The object for reading; call `release` when the response is done. */
  open(key: string): { object: StoredObject; release(): void } | undefined {
    return this.catalog.open(key);
  }

  async delete(key: string): Promise<void> {
    if (!(await this.catalog.deleteKey(key))) throw new NotFoundError("object", key);
  }

  /** Deletes every object under `<app>/` or `<app>/<session>/`. */
  deletePrefix(prefix: string): Promise<number> {
    return this.catalog.deletePrefix(prefix);
  }

  list(prefix: string, after: string | undefined, limit: number): ObjectStat[] {
    return this.catalog.list(prefix, after, limit);
  }

  close(): Promise<void> {
    return this.catalog.close();
  }

  /**
   * Folds every delta segment into one. Only the layout changes: the parts,
   * their versions and the bytes a read returns stay the same. The patch
   * that asked for it has committed, so a failure is logged, not returned;
   * the next patch tries again.
   */
  private async compact(key: string): Promise<void> {
    try {
      await this.foldDeltas(key);
    } catch (err) {
      this.log(
        `cache: compacting "${key}" failed (will retry on its next patch): ${err instanceof Error ? err.message : err}`,
      );
    }
  }

  private async foldDeltas(key: string): Promise<void> {
    const opened = this.catalog.open(key);
    if (!opened) return;
    let merged: ReceivedBody;
    const { stat, segments } = opened.object;
    const deltas = segments.slice(1);
    const lengths = deltas.flatMap((s) => s.lengths);
    const total = segmentSize(lengths);
    try {
      merged = await receiveBody(concatSegments(deltas), {
        target: this.catalog.bodyTarget(total),
        hash: createHash("sha256"),
        expectedLength: total,
      });
    } finally {
      opened.release();
    }
    await this.catalog.replaceDeltas(key, stat.version, lengths, merged);
  }
}

async function* concatSegments(segments: Segment[]): AsyncGenerator<Buffer> {
  for (const s of segments) yield* readSegment(s.bytes, 0, segmentSize(s.lengths));
}

function checkIfVersion(key: string, expected: number | undefined, current: ObjectStat | undefined): void {
  if (expected === undefined) return;
  const actual = current?.version ?? 0;
  if (actual === expected) return;
  throw new FailedPreconditionError(
    expected === 0
      ? `object "${key}" already exists (version ${actual}); kiln-if-version 0 requires it not to`
      : actual === 0
        ? `object "${key}" does not exist; kiln-if-version requires version ${expected}`
        : `object "${key}" is at version ${actual}, not ${expected}`,
  );
}

function checkSha256(expected: string | undefined, actual: string | undefined): void {
  if (expected !== undefined && expected !== actual)
    throw new InvalidArgumentError("kiln-sha256", `the body's sha256 is ${actual}, the header says ${expected}`);
}
