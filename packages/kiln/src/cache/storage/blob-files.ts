import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

/**
 * A directory of immutable blob files (`<root>/blobs/<name>`) plus the temp
 * files they are written as (`<root>/tmp/`). A blob only appears under its
 * final name by rename, so it is never seen half written. Readers pin the
 * blobs they stream (`acquire`/`release`); a blob retired while pinned is
 * deleted when its last reader finishes.
 */
export class BlobFiles {
  readonly tmpDir: string;
  readonly blobDir: string;
  private readonly pins = new Map<string, number>();
  private readonly retired = new Set<string>();

  /** Creates the directories and removes temp files an earlier process left behind. */
  constructor(root: string) {
    this.tmpDir = path.join(root, "tmp");
    this.blobDir = path.join(root, "blobs");
    fs.rmSync(this.tmpDir, { recursive: true, force: true });
    fs.mkdirSync(this.tmpDir, { recursive: true });
    fs.mkdirSync(this.blobDir, { recursive: true });
  }

  tempPath(): string {
    return path.join(this.tmpDir, newName());
  }

  path(name: string): string {
    return path.join(this.blobDir, name);
  }

  /** Moves a finished temp file in under a new name; with `sync`, the rename is made durable too. */
  async adopt(tempPath: string, sync: boolean): Promise<{ name: string; path: string }> {
    const name = newName();
    const target = this.path(name);
    await fs.promises.rename(tempPath, target);
    if (sync) {
      const dir = await fs.promises.open(this.blobDir, "r");
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    }
    return { name, path: target };
  }

  acquire(name: string): void {
    this.pins.set(name, (this.pins.get(name) ?? 0) + 1);
  }

  release(name: string): void {
    const left = (this.pins.get(name) ?? 1) - 1;
    if (left > 0) {
      this.pins.set(name, left);
      return;
    }
    this.pins.delete(name);
    if (this.retired.delete(name)) this.unlink(name);
  }

  /** The blob is no longer referenced: delete it now, or when its last reader releases it. */
  retire(name: string): void {
    if (this.pins.has(name)) this.retired.add(name);
    else this.unlink(name);
  }

  /** Deletes every blob not in `keep` (left by a crash between rename and the metadata commit). */
  removeOrphans(keep: Set<string>): number {
    let removed = 0;
    for (const name of fs.readdirSync(this.blobDir)) {
      if (keep.has(name)) continue;
      fs.rmSync(this.path(name), { force: true });
      removed++;
    }
    return removed;
  }

  private unlink(name: string): void {
    fs.promises.unlink(this.path(name)).catch(() => {
      // Already gone: nothing to free.
    });
  }
}

function newName(): string {
  return randomBytes(16).toString("hex");
}
