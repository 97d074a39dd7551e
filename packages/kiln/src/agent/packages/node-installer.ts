import { sha256Hex } from "@kiln/protocol";
import * as fs from "node:fs";
import * as path from "node:path";
import { exists, renameIntoPlace, tempPath, type PackageLayout } from "../../package-store/layout.js";
import { npmCommand, runLogged, tail } from "../../package-store/npm.js";
import { prependPath } from "../../util/search-path.js";
import { joinFlight } from "./single-flight.js";

export interface NodeInstallOptions {
  layout: PackageLayout;
  /** For one `npm ci`. */
  installTimeoutMs: number;
  log(line: string): void;
  signal?: AbortSignal;
}

const LOCKFILES = ["npm-shrinkwrap.json", "package-lock.json"];

interface PackageManifest {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  scripts?: unknown;
}

/**
 * The "node" installer. A package whose package.json lists dependencies gets
 * them from `npm ci --omit=dev` into `<deps>/<sha256 of its lockfile>/`, run
 * once per lockfile per node (with one npm cache shared by all) and linked in
 * as `<release>/node_modules`, so a redeploy with an unchanged lockfile
 * installs nothing. A package that ships its own node_modules is left as it
 * is. Without a lockfile it fails: versions would differ from node to node.
 *
 * npm runs in a staging dir that mirrors the release (so `file:` tarball
 * dependencies resolve) with a package.json whose `scripts` are removed: the
 * package is already built, so its own prepare/install scripts do not run;
 * its dependencies' install scripts do. `file:` directory dependencies are not
 * supported (their links would point into the staging dir): pack them.
 *
 * @example
 * const env = await installNode("/work/packages/releases/9f…", { layout, installTimeoutMs: 600_000, log });
 */
export async function installNode(dir: string, o: NodeInstallOptions): Promise<Record<string, string>> {
  const env = { PATH: prependPath([path.join(dir, "node_modules", ".bin")], process.env.PATH) };
  const manifest = await readManifest(dir);
  const deps = { ...manifest.dependencies, ...manifest.optionalDependencies };
  if (Object.keys(deps).length === 0) return env;
  const nodeModules = path.join(dir, "node_modules");
  const present = await fs.promises.lstat(nodeModules).catch(() => undefined);
  if (present && !present.isSymbolicLink()) {
    o.log(`${dir} ships its own node_modules; not running npm`);
    return env;
  }
  const lockfile = await findLockfile(dir);
  const key = sha256Hex(await fs.promises.readFile(path.join(dir, lockfile)));
  const depsDir = path.join(o.layout.deps, key);
  if (await exists(depsDir)) o.log(`dependencies for lockfile ${key} are installed already`);
  else await joinFlight(`npm ${o.layout.root} ${key}`, o.signal, (signal) => npmCi(dir, key, { ...o, signal }));
  await linkAtomically(path.join(depsDir, "node_modules"), nodeModules);
  return env;
}

async function readManifest(dir: string): Promise<PackageManifest> {
  let text: string;
  try {
    text = await fs.promises.readFile(path.join(dir, "package.json"), "utf8");
  } catch {
    throw new Error('the "node" installer needs a package.json at the root of the package, and there is none');
  }
  try {
    return JSON.parse(text) as PackageManifest;
  } catch (err) {
    throw new Error(`package.json is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

async function findLockfile(dir: string): Promise<string> {
  for (const name of LOCKFILES) if (await exists(path.join(dir, name))) return name;
  throw new Error(
    "package.json lists dependencies but the package has no package-lock.json " +
      "(run npm install and ship the lockfile, so every node installs the same versions)",
  );
}

/** Runs `npm ci` in a staging dir and renames it to `<deps>/<key>` on success. */
async function npmCi(dir: string, key: string, o: NodeInstallOptions & { signal: AbortSignal }): Promise<void> {
  const staging = tempPath(o.layout.deps);
  await fs.promises.mkdir(staging);
  try {
    const links = await stage(dir, staging);
    const logFile = path.join(o.layout.logs, `${key}.log`);
    o.log(`running npm ci for lockfile ${key} (log: ${logFile})`);
    const args = ["ci", "--omit=dev", "--no-audit", "--no-fund", "--cache", o.layout.npmCache];
    const outcome = await runLogged(npmCommand(), args, staging, logFile, o);
    if (outcome !== "ok") {
      throw new Error(`npm ci ${outcome} (log: ${logFile}); last lines:\n${await tail(logFile)}`);
    }
    await Promise.all(links.map((link) => fs.promises.unlink(link)));
    await renameIntoPlace(staging, path.join(o.layout.deps, key));
  } finally {
    await fs.promises.rm(staging, { recursive: true, force: true });
  }
}

/** Mirrors the release into `staging` as symlinks, except a script-free package.json; returns the links. */
async function stage(dir: string, staging: string): Promise<string[]> {
  const links: string[] = [];
  for (const name of await fs.promises.readdir(dir)) {
    if (name === "node_modules" || name === "package.json") continue;
    const link = path.join(staging, name);
    await fs.promises.symlink(path.join(dir, name), link);
    links.push(link);
  }
  const manifest = JSON.parse(await fs.promises.readFile(path.join(dir, "package.json"), "utf8")) as PackageManifest;
  delete manifest.scripts;
  await fs.promises.writeFile(path.join(staging, "package.json"), JSON.stringify(manifest, null, 2));
  return links;
}

/** Points `link` at `target`, replacing an older link in one rename. */
async function linkAtomically(target: string, link: string): Promise<void> {
  if ((await fs.promises.readlink(link).catch(() => undefined)) === target) return;
  const temp = tempPath(path.dirname(link));
  await fs.promises.symlink(target, temp);
  await fs.promises.rename(temp, link);
}
