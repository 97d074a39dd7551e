import * as fs from "node:fs/promises";
import * as path from "node:path";

/** An archive entry that must not be installed; the message names it. */
export class UnsafeEntryError extends Error {
  constructor(entry: string, reason: string) {
    super(`archive entry ${JSON.stringify(entry)} rejected: ${reason}`);
    this.name = "UnsafeEntryError";
  }
}

// Linux gives up after 40 symlinks in one lookup; so do we.
const MAX_SYMLINK_HOPS = 40;

/**
 * Checks an entry's path before anything is written: relative, no `..`
 * component, no backslash or NUL.
 *
 * @example
 * checkEntryPath("bin/app")   // fine
 * checkEntryPath("../x")      // throws: archive entry "../x" rejected: has a ".." component
 */
export function checkEntryPath(name: string): void {
  if (name === "") throw new UnsafeEntryError(name, "empty path");
  if (name.includes("\0")) throw new UnsafeEntryError(name, "NUL in its path");
  if (name.includes("\\")) throw new UnsafeEntryError(name, "backslash in its path");
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name)) throw new UnsafeEntryError(name, "absolute path");
  if (name.split("/").includes("..")) throw new UnsafeEntryError(name, 'has a ".." component');
}

/**
 * Checks a symlink's target as written in the archive: relative, and inside
 * the release when resolved from the link's directory. Chains of links are
 * checked on disk afterwards by {@link checkLinksStayInside}.
 */
export function checkSymlinkTarget(name: string, target: string): void {
  if (target === "") throw new UnsafeEntryError(name, "symlink with an empty target");
  if (target.includes("\0")) throw new UnsafeEntryError(name, "NUL in its symlink target");
  if (path.posix.isAbsolute(target))
    throw new UnsafeEntryError(name, `symlink to absolute path ${target}, outside the release`);
  const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(name), target));
  if (resolved === ".." || resolved.startsWith("../"))
    throw new UnsafeEntryError(name, `symlink to ${target}, outside the release`);
}

/**
 * After extraction: every symlink under `root`, followed through any other
 * symlinks on the way, must end inside `root`. Throws naming the first that does not.
 */
export async function checkLinksStayInside(root: string): Promise<void> {
  for (const dirent of await fs.readdir(root, { recursive: true, withFileTypes: true })) {
    if (!dirent.isSymbolicLink()) continue;
    const link = path.join(dirent.parentPath, dirent.name);
    const rel = path.relative(root, link);
    const target = await fs.readlink(link);
    // Not path.join: it would fold `y/..` lexically, hiding a `y` that is itself a link.
    const parent = path.dirname(rel);
    const problem = await escapes(root, parent === "." ? target : `${parent}/${target}`);
    if (problem) throw new UnsafeEntryError(rel, `symlink to ${target} ${problem}`);
  }
}

/** Walks `rel` from `root` one component at a time, following symlinks; why it leaves `root`, or undefined. */
async function escapes(root: string, rel: string): Promise<string | undefined> {
  let pending = rel.split("/");
  const inside: string[] = [];
  let hops = 0;
  while (pending.length > 0) {
    const component = pending.shift()!;
    if (component === "" || component === ".") continue;
    if (component === "..") {
      if (inside.length === 0) return "resolves outside the release";
      inside.pop();
      continue;
    }
    const here = path.join(root, ...inside, component);
    const stat = await fs.lstat(here).catch(() => undefined);
    if (!stat?.isSymbolicLink()) {
      inside.push(component);
      continue;
    }
    if (++hops > MAX_SYMLINK_HOPS) return "is part of a symlink loop";
    const target = await fs.readlink(here);
    if (path.isAbsolute(target)) return `resolves through ${path.relative(root, here)} to an absolute path`;
    pending = [...target.split("/"), ...pending];
  }
  return undefined;
}
