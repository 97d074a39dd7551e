import * as fs from "node:fs";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import ignore, { type Ignore } from "ignore";
import { create as createTar } from "tar";
import { Sha256Counter, InvalidArgumentError } from "@kiln/protocol";

/** What to leave out of a package and how to read the project's own ignore rules. */
export interface PackOptions {
  /** gitignore-style patterns relative to the directory, e.g. `node_modules`, `*.log`, `build/`. */
  excludes?: readonly string[];
  /** Also honour the directory's top-level `.gitignore`. Default true. */
  useGitignore?: boolean;
}

/** A packed archive: where it is and what identifies its content. */
export interface PackedArchive {
  file: string;
  /** Hex sha256 of the archive bytes: equal trees give equal archives, hence equal digests. */
  sha256: string;
  size: number;
  /** Paths packed, relative to the directory, sorted. */
  files: string[];
}

// Every entry gets this mtime so an unchanged tree packs to the same bytes (content addressing).
const FIXED_MTIME = new Date(0);

/**
 * Packs `dir` into a gzipped tar at `outFile`, deterministically: entries
 * sorted, owner and times left out, so the digest changes exactly when a
 * packed file's content, name or mode changes. Symbolic links are packed as
 * links (the agent refuses ones that point outside the package).
 *
 * @example
 * const pkg = await packDirectory("./my-service", "/tmp/my-service.tar.gz", { excludes: ["node_modules", ".git"] });
 * console.log(pkg.sha256.slice(0, 16), pkg.files.length);
 */
export async function packDirectory(dir: string, outFile: string, options: PackOptions = {}): Promise<PackedArchive> {
  const root = path.resolve(dir);
  const stat = await fs.promises.stat(root).catch(() => undefined);
  if (!stat?.isDirectory()) throw new InvalidArgumentError("path", `${dir} is not a directory`);
  const rules = await ignoreRules(root, options);
  const files = (await listFiles(root, "", rules)).sort();
  if (files.length === 0) throw new InvalidArgumentError("path", `${dir} has no files to package (all excluded?)`);

  return writeTarGz(root, files, outFile);
}

/**
 * Packs one file into a gzipped tar at `outFile`, under its base name, with
 * the same determinism as {@link packDirectory} (its mode, e.g. executable, is kept).
 *
 * @example
 * const pkg = await packFile("./build/server", "/tmp/server.tar.gz"); // the archive holds "server"
 */
export async function packFile(file: string, outFile: string): Promise<PackedArchive> {
  const source = path.resolve(file);
  const stat = await fs.promises.stat(source).catch(() => undefined);
  if (!stat?.isFile()) throw new InvalidArgumentError("path", `${file} is not a file`);
  return writeTarGz(path.dirname(source), [path.basename(source)], outFile);
}

async function writeTarGz(root: string, files: string[], outFile: string): Promise<PackedArchive> {
  const measure = new Sha256Counter();
  const tarStream = createTar(
    { cwd: root, gzip: true, portable: true, mtime: FIXED_MTIME, noDirRecurse: true, follow: false },
    files,
  );
  await pipeline(tarStream, measure, fs.createWriteStream(outFile));
  return { file: outFile, sha256: measure.digest(), size: measure.bytes, files };
}

async function ignoreRules(root: string, options: PackOptions): Promise<Ignore> {
  const rules = ignore().add([...(options.excludes ?? [])]);
  if (options.useGitignore ?? true) {
    const gitignore = await fs.promises.readFile(path.join(root, ".gitignore"), "utf8").catch(() => undefined);
    if (gitignore !== undefined) rules.add(gitignore);
  }
  return rules;
}

/** Files and links under `root/rel`, as POSIX paths relative to root, minus ignored ones. */
async function listFiles(root: string, rel: string, rules: Ignore): Promise<string[]> {
  const out: string[] = [];
  const entries = await fs.promises.readdir(path.join(root, rel), { withFileTypes: true });
  for (const entry of entries) {
    const child = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) {
      if (!rules.ignores(`${child}/`)) out.push(...(await listFiles(root, child, rules)));
    } else if ((entry.isFile() || entry.isSymbolicLink()) && !rules.ignores(child)) {
      out.push(child);
    }
  }
  return out;
}
