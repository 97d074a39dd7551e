import { formatBytes } from "@kiln/protocol";
import * as fs from "node:fs";
import type { BodyTarget, Catalog, ObjectStat, Segment, StoredObject } from "./backend.js";
import { BlobFiles } from "./blob-files.js";
import type { DiskQuota, ReceivedBody } from "./body-sink.js";
import { StorageFullError } from "./errors.js";
import { segmentSize } from "./segments.js";

export interface MemoryStorageOptions {
  kind: "memory";
  /** Bytes of object data held in memory; least recently used objects beyond it are spilled to disk. */
  maxBytes: number;
  /** Where spilled objects go. Its `blobs/` and `tmp/` subdirectories are emptied at start and at close. */
  spillDir: string;
  /** Bytes allowed in spill files (default: no limit). */
  maxSpillBytes?: number;
}

interface Entry {
  object: StoredObject;
  /** Bytes of this object's segments that are in memory. */
  memoryBytes: number;
}

/**
 * The `memory` backend: objects in a map, least recently used first. When
 * the bytes in memory would pass maxBytes, the least recently used objects
 * are written to spill files (never dropped); a body larger than maxBytes
 * goes to a spill file as it arrives. A write that cannot be kept (spill
 * over maxSpillBytes, or the disk fails) is refused with StorageFullError
 * and changes nothing. Nothing survives a restart.
 */
export class MemoryCatalog implements Catalog {
  readonly kind = "memory";
  private readonly entries = new Map<string, Entry>();
  private readonly files: BlobFiles;
  private readonly quota: DiskQuota;
  private readonly maxBytes: number;
  private readonly maxSpillBytes: number;
  private memoryUsed = 0;
  private spillUsed = 0;
  /** Mutations run one at a time: spilling awaits the disk, and nothing may move under it. */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: MemoryStorageOptions) {
    this.maxBytes = options.maxBytes;
    this.maxSpillBytes = options.maxSpillBytes ?? Infinity;
    fs.mkdirSync(options.spillDir, { recursive: true });
    this.files = new BlobFiles(options.spillDir);
    this.files.removeOrphans(new Set());
    this.quota = {
      take: (bytes) => {
        if (this.spillUsed + bytes > this.maxSpillBytes)
          throw new StorageFullError(
            `the memory backend's spill is full: ${formatBytes(this.spillUsed)} of maxSpillBytes ` +
              `${formatBytes(this.maxSpillBytes)} used, ${formatBytes(bytes)} more needed`,
          );
        this.spillUsed += bytes;
      },
      give: (bytes) => {
        this.spillUsed -= bytes;
      },
    };
  }

  bodyTarget(): BodyTarget {
    return { memoryLimit: this.maxBytes, files: this.files, sync: false, quota: this.quota };
  }

  stat(key: string): ObjectStat | undefined {
    return this.entries.get(key)?.object.stat;
  }

  open(key: string): { object: StoredObject; release(): void } | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.touch(key, entry);
    const { object } = entry;
    const pinned = fileNames(object.segments);
    for (const name of pinned) this.files.acquire(name);
    return {
      object,
      release: () => {
        for (const name of pinned) this.files.release(name);
      },
    };
  }

  setBase(
    key: string,
    body: ReceivedBody,
    decide: (previous: ObjectStat | undefined) => ObjectStat,
  ): Promise<ObjectStat> {
    return this.exclusive(body, async () => {
      const previous = this.entries.get(key);
      const stat = decide(previous?.object.stat);
      const added = body.content.kind === "memory" ? body.size : 0;
      await this.makeRoom(added - (previous?.memoryBytes ?? 0), key);
      const segment = await this.segment(stat.baseVersion, [body.size], body);
      if (previous) this.drop(key, previous);
      this.entries.set(key, { object: { stat, segments: [segment] }, memoryBytes: added });
      this.memoryUsed += added;
      return stat;
    });
  }

  appendDelta(stat: ObjectStat, fromVersion: number, body: ReceivedBody): Promise<number | undefined> {
    return this.exclusive(body, async () => {
      if (this.entries.get(stat.key)?.object.stat.version !== fromVersion) {
        await body.discard();
        return undefined;
      }
      const added = body.content.kind === "memory" ? body.size : 0;
      // The object's own older segments may be spilled to make room for its new delta.
      await this.makeRoom(added);
      const segment = await this.segment(stat.version, [body.size], body);
      const entry = this.entries.get(stat.key)!;
      entry.object = { stat, segments: [...entry.object.segments, segment] };
      entry.memoryBytes += added;
      this.memoryUsed += added;
      this.touch(stat.key, entry);
      return entry.object.segments.length - 1;
    });
  }

  replaceDeltas(key: string, version: number, lengths: number[], body: ReceivedBody): Promise<boolean> {
    return this.exclusive(body, async () => {
      const entry = this.entries.get(key);
      if (entry?.object.stat.version !== version) {
        await body.discard();
        return false;
      }
      const [base, ...deltas] = entry.object.segments;
      const freed = memoryBytes(deltas);
      const added = body.content.kind === "memory" ? body.size : 0;
      await this.makeRoom(added - freed, key);
      const segment = await this.segment(base!.firstVersion + 1, lengths, body);
      this.release(deltas);
      const current = this.entries.get(key)!;
      current.object = { stat: current.object.stat, segments: [current.object.segments[0]!, segment] };
      current.memoryBytes += added - freed;
      this.memoryUsed += added - freed;
      return true;
    });
  }

  deleteKey(key: string): Promise<boolean> {
    return this.exclusive(undefined, async () => {
      const entry = this.entries.get(key);
      if (entry) this.drop(key, entry);
      return entry !== undefined;
    });
  }

  deletePrefix(prefix: string): Promise<number> {
    return this.exclusive(undefined, async () => {
      let n = 0;
      for (const [key, entry] of [...this.entries]) {
        if (!key.startsWith(prefix)) continue;
        this.drop(key, entry);
        n++;
      }
      return n;
    });
  }

  list(prefix: string, after: string | undefined, limit: number): ObjectStat[] {
    const keys: string[] = [];
    for (const key of this.entries.keys())
      if (key.startsWith(prefix) && (after === undefined || key > after)) keys.push(key);
    keys.sort();
    return keys.slice(0, limit).map((k) => this.entries.get(k)!.object.stat);
  }

  async close(): Promise<void> {
    await this.tail;
    this.entries.clear();
    this.files.removeOrphans(new Set());
  }

  /** Runs `fn` after every earlier mutation; if `fn` throws, `body` is discarded. */
  private exclusive<T>(body: ReceivedBody | undefined, fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn).catch(async (err: unknown) => {
      await body?.discard();
      throw err;
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Spills least recently used objects (other than `exceptKey`) until `added`
   * more bytes fit in memory. Refuses up front, changing nothing, when the
   * spill could not take them.
   */
  private async makeRoom(added: number, exceptKey?: string): Promise<void> {
    let excess = this.memoryUsed + added - this.maxBytes;
    if (excess <= 0) return;
    const victims: Entry[] = [];
    let spillBytes = 0;
    for (const [key, entry] of this.entries) {
      if (excess <= 0) break;
      if (key === exceptKey || entry.memoryBytes === 0) continue;
      victims.push(entry);
      excess -= entry.memoryBytes;
      spillBytes += entry.memoryBytes;
    }
    if (this.spillUsed + spillBytes > this.maxSpillBytes)
      throw new StorageFullError(
        `the memory backend is full: ${formatBytes(this.memoryUsed)} in memory (maxBytes ${formatBytes(this.maxBytes)}) ` +
          `and spilling ${formatBytes(spillBytes)} would pass maxSpillBytes ${formatBytes(this.maxSpillBytes)} ` +
          `(${formatBytes(this.spillUsed)} used)`,
      );
    for (const victim of victims) await this.spill(victim);
  }

  /** Moves an object's in-memory segments to spill files; on a disk error the object stays as it was. */
  private async spill(entry: Entry): Promise<void> {
    const written: string[] = [];
    let taken = 0;
    try {
      const segments: Segment[] = [];
      for (const s of entry.object.segments) {
        if (s.bytes.kind === "file") {
          segments.push(s);
          continue;
        }
        this.quota.take(s.bytes.data.length);
        taken += s.bytes.data.length;
        const tempPath = this.files.tempPath();
        try {
          await fs.promises.writeFile(tempPath, s.bytes.data);
        } catch (err) {
          await fs.promises.rm(tempPath, { force: true });
          throw err;
        }
        const adopted = await this.files.adopt(tempPath, false);
        written.push(adopted.name);
        segments.push({ ...s, bytes: { kind: "file", ...adopted } });
      }
      entry.object = { stat: entry.object.stat, segments };
      this.memoryUsed -= entry.memoryBytes;
      entry.memoryBytes = 0;
    } catch (err) {
      for (const name of written) this.files.retire(name);
      this.quota.give(taken);
      if (err instanceof StorageFullError) throw err;
      throw new StorageFullError(
        `the memory backend could not spill to ${this.options.spillDir}: ${err instanceof Error ? err.message : String(err)}`,
        { cause: err },
      );
    }
  }

  private async segment(firstVersion: number, lengths: number[], body: ReceivedBody): Promise<Segment> {
    if (body.content.kind === "memory")
      return { firstVersion, lengths, bytes: { kind: "memory", data: body.content.data } };
    const adopted = await this.files.adopt(body.content.tempPath, false);
    return { firstVersion, lengths, bytes: { kind: "file", ...adopted } };
  }

  private drop(key: string, entry: Entry): void {
    this.entries.delete(key);
    this.release(entry.object.segments);
    this.memoryUsed -= entry.memoryBytes;
  }

  /** Frees the spill files of segments no longer in any object (memory is freed by the caller's accounting). */
  private release(segments: Segment[]): void {
    for (const s of segments) {
      if (s.bytes.kind !== "file") continue;
      this.files.retire(s.bytes.name);
      this.quota.give(segmentSize(s.lengths));
    }
  }

  private touch(key: string, entry: Entry): void {
    this.entries.delete(key);
    this.entries.set(key, entry);
  }
}

function fileNames(segments: Segment[]): string[] {
  return segments.flatMap((s) => (s.bytes.kind === "file" ? [s.bytes.name] : []));
}

function memoryBytes(segments: Segment[]): number {
  let n = 0;
  for (const s of segments) if (s.bytes.kind === "memory") n += s.bytes.data.length;
  return n;
}
