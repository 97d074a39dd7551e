import { RESERVED_DIRS } from "@kiln/protocol/jobs";
import type { Stats } from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";

/**
 * What a command left in its working directory, found by comparing a
 * listing taken before it ran with one taken after: the executor's only job
 * in collecting outputs (matching and persisting are shared code). Entries
 * are lstat'ed, never followed, so a link is reported as a link.
 */

export type EntryKind = "file" | "directory" | "symlink" | "fifo" | "socket" | "block-device" | "char-device" | "other";

export interface ListingEntry {
  kind: EntryKind;
  size: number;
  ino: number;
  dev: number;
  nlink: number;
  mtimeMs: number;
  /** Set by every write and not by `touch -d`, so a file rewritten with its old mtime restored still counts as changed. */
  ctimeMs: number;
  /** Why this entry can never be collected (where a link points, a FIFO, an unreadable directory…). */
  refusal?: string;
}

/** Every entry under a directory, by relative POSIX path, except the reserved directories. */
export interface Listing {
  files: Map<string, ListingEntry>;
}

export interface NewEntries {
  /** Regular files that are new or changed, sorted. */
  files: string[];
  /** New or changed entries that are not collected, and why, sorted by path. */
  refused: { path: string; reason: string }[];
}

/** lstat calls in flight at once, so a directory of a million files does not queue a million promises. */
const LSTAT_BATCH = 64;

const NOT_REGULAR: Partial<Record<EntryKind, string>> = {
  fifo: "a FIFO (named pipe), not a regular file",
  socket: "a socket, not a regular file",
  "block-device": "a block device, not a regular file",
  "char-device": "a character device, not a regular file",
  other: "not a regular file",
};

/**
 * Lists `dir` recursively with lstat only: symbolic links are recorded, never
 * followed, and the reserved directories (RESERVED_DIRS) are skipped.
 * Entries that vanish while listing are left out.
 *
 * @example
 * const before = await takeListing(workDir);
 * await runCommand(workDir);
 * const { files, refused } = newEntries(before, await takeListing(workDir));
 */
export async function takeListing(dir: string): Promise<Listing> {
  const root = await fsp.realpath(dir);
  const files = new Map<string, ListingEntry>();
  const pending: string[] = [""];
  while (pending.length > 0) {
    const relDir = pending.pop()!;
    const absDir = relDir === "" ? root : path.join(root, relDir);
    let names: Buffer[];
    try {
      names = await fsp.readdir(absDir, { encoding: "buffer" });
    } catch (err) {
      if (relDir === "") throw err;
      const entry = files.get(relDir);
      if (entry && errnoCode(err) !== "ENOENT")
        entry.refusal = `a directory that could not be read (${errnoCode(err) ?? String(err)}): nothing in it was collected`;
      continue;
    }
    const visible = relDir === "" ? names.filter((n) => !RESERVED_DIRS.includes(n.toString("utf8"))) : names;
    for (let i = 0; i < visible.length; i += LSTAT_BATCH) {
      const batch = await Promise.all(visible.slice(i, i + LSTAT_BATCH).map((raw) => describe(root, absDir, raw)));
      for (const found of batch) {
        if (!found) continue;
        const rel = relDir === "" ? found.name : `${relDir}/${found.name}`;
        files.set(rel, found.entry);
        if (found.entry.kind === "directory" && !found.entry.refusal) pending.push(rel);
      }
    }
  }
  return { files };
}

/** One directory entry, or undefined when it vanished. */
async function describe(
  root: string,
  absDir: string,
  raw: Buffer,
): Promise<{ name: string; entry: ListingEntry } | undefined> {
  const name = raw.toString("utf8");
  // A name that is not UTF-8 has no string path: it can be lstat'ed through its bytes but never matched or collected.
  const validName = Buffer.from(name, "utf8").equals(raw);
  const abs = validName ? path.join(absDir, name) : Buffer.concat([Buffer.from(`${absDir}${path.sep}`), raw]);
  let st: Stats;
  try {
    st = await fsp.lstat(abs);
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return undefined;
    throw err;
  }
  const kind = kindOf(st);
  const entry: ListingEntry = {
    kind,
    size: st.size,
    ino: st.ino,
    dev: st.dev,
    nlink: st.nlink,
    mtimeMs: st.mtimeMs,
    ctimeMs: st.ctimeMs,
  };
  if (!validName) entry.refusal = "its name is not valid UTF-8, so no pattern can name it";
  else if (kind === "symlink") entry.refusal = await describeLink(root, path.join(absDir, name));
  else if (NOT_REGULAR[kind]) entry.refusal = NOT_REGULAR[kind];
  return { name, entry };
}

async function describeLink(root: string, abs: string): Promise<string> {
  let target: string;
  try {
    target = await fsp.readlink(abs);
  } catch {
    return "a symbolic link (links are never followed)";
  }
  // Where it finally lands when it resolves (through any chain of links); where it points on paper when it dangles.
  const resolved = await fsp.realpath(abs).catch(() => path.resolve(path.dirname(abs), target));
  const inside = resolved === root || resolved.startsWith(root + path.sep);
  return inside
    ? `a symbolic link to ${JSON.stringify(target)} (inside the working directory, but links are never followed: write the file itself)`
    : `a symbolic link to ${JSON.stringify(target)}, outside the working directory`;
}

function kindOf(st: Stats): EntryKind {
  if (st.isFile()) return "file";
  if (st.isDirectory()) return "directory";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isFIFO()) return "fifo";
  if (st.isSocket()) return "socket";
  if (st.isBlockDevice()) return "block-device";
  if (st.isCharacterDevice()) return "char-device";
  return "other";
}

function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function sameEntry(a: ListingEntry, b: ListingEntry): boolean {
  return (
    a.kind === b.kind &&
    a.size === b.size &&
    a.ino === b.ino &&
    a.dev === b.dev &&
    a.mtimeMs === b.mtimeMs &&
    // A new hard link to an input moves its ctime without touching its bytes; only a ctime that moved alone counts.
    (a.ctimeMs === b.ctimeMs || a.nlink !== b.nlink)
  );
}

/**
 * What changed between two listings of one directory: regular files that
 * are new or whose size, inode, mtime or ctime differ (a file rewritten in
 * place counts, an input left alone does not), and the new or changed
 * entries that will not be collected: links (saying where they point and
 * whether that is outside), FIFOs, sockets, devices, unreadable directories,
 * and hard links to files outside the directory. Directories themselves are
 * not reported.
 *
 * @example
 * const { files, refused } = newEntries(before, after); // files: ["output/rows.csv"]
 */
export function newEntries(before: Listing, after: Listing): NewEntries {
  const linksInside = new Map<string, number>();
  for (const entry of after.files.values())
    if (entry.kind === "file") linksInside.set(inode(entry), (linksInside.get(inode(entry)) ?? 0) + 1);
  const files: string[] = [];
  const refused: { path: string; reason: string }[] = [];
  for (const rel of [...after.files.keys()].sort()) {
    const entry = after.files.get(rel)!;
    const old = before.files.get(rel);
    if (old && sameEntry(old, entry)) continue;
    if (entry.refusal) refused.push({ path: rel, reason: entry.refusal });
    else if (entry.kind === "file") {
      const inside = linksInside.get(inode(entry))!;
      // Another name for the same inode outside the directory means the bytes are not the job's own.
      if (entry.nlink > inside)
        refused.push({
          path: rel,
          reason: `a hard link to a file outside the working directory (${entry.nlink} links, ${inside} inside)`,
        });
      else files.push(rel);
    }
  }
  return { files, refused };
}

function inode(entry: ListingEntry): string {
  return `${entry.dev}:${entry.ino}`;
}
