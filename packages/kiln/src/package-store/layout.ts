import { processExists } from "@kiln/protocol";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";

/**
 * A node's package store: where the agent's package delivery and kiln-run's
 * per-service dependency installs keep their files, all under
 * `<workDir>/packages` so every rename between them stays on one filesystem
 * (and so is atomic), and both share one npm cache.
 */
export interface PackageLayout {
  root: string;
  /** `.tmp-*.part` files while downloading. */
  downloads: string;
  /** `<sha256>/`: one extracted package per content hash. */
  releases: string;
  /** `<lockfile sha256>/node_modules`: dependencies shared by every release with that lockfile. */
  deps: string;
  /** `<key>.log`: installer output. */
  logs: string;
  /** npm's cache, shared by every install on this node. */
  npmCache: string;
}

const TEMP_PREFIX = ".tmp-";
const swept = new Set<string>();

/** The layout under `<workDir>/packages`. */
export function packageLayout(workDir: string): PackageLayout {
  const root = path.join(path.resolve(workDir), "packages");
  return {
    root,
    downloads: path.join(root, "downloads"),
    releases: path.join(root, "releases"),
    deps: path.join(root, "deps"),
    logs: path.join(root, "logs"),
    npmCache: path.join(root, "npm-cache"),
  };
}

/**
 * Creates the directories; the first time in this process, also removes temp
 * files and dirs left by processes that died mid-install (their pid is in the name).
 */
export async function prepareLayout(layout: PackageLayout): Promise<void> {
  for (const dir of [layout.downloads, layout.releases, layout.deps, layout.logs, layout.npmCache])
    await fs.mkdir(dir, { recursive: true });
  if (swept.has(layout.root)) return;
  swept.add(layout.root);
  for (const dir of [layout.downloads, layout.releases, layout.deps]) {
    for (const name of await fs.readdir(dir)) {
      const pid = Number(/^\.tmp-(\d+)-/.exec(name)?.[1]);
      if (pid && pid !== process.pid && !processExists(pid))
        await fs.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }
}

/** A fresh name in `dir` for something not finished yet, e.g. `.tmp-4242-9f3c1a2b4d5e.part`. */
export function tempPath(dir: string, suffix = ""): string {
  return path.join(dir, `${TEMP_PREFIX}${process.pid}-${randomBytes(6).toString("hex")}${suffix}`);
}

/**
 * Renames a finished temp dir to its final name. Returns false (and removes
 * the temp dir) when another installer got there first: content-keyed names
 * mean theirs is the same.
 */
export async function renameIntoPlace(temp: string, final: string): Promise<boolean> {
  try {
    await fs.rename(temp, final);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EEXIST" && code !== "ENOTEMPTY") throw err;
    await fs.rm(temp, { recursive: true, force: true });
    return false;
  }
}

export async function exists(p: string): Promise<boolean> {
  return (await fs.lstat(p).catch(() => undefined)) !== undefined;
}
