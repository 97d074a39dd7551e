import { sha256Hex } from "@kiln/protocol";
import * as fs from "node:fs";
import * as path from "node:path";
import { exists, renameIntoPlace, tempPath, type PackageLayout } from "../../package-store/layout.js";
import {
  dependenciesToInstall,
  findLockfile,
  lockfileForNode,
  manifestForNode,
  type NodeManifest,
} from "../../package-store/node-manifest.js";
import { npmCommand, runLogged, tail } from "../../package-store/npm.js";
import { providedPackageDirs } from "../../package-store/provided.js";
import { prependPath } from "../../util/search-path.js";
import { joinFlight } from "./single-flight.js";

export interface NodeInstallOptions {
  layout: PackageLayout;
  /** For one `npm ci`. */
  installTimeoutMs: number;
  log(line: string): void;
  signal?: AbortSignal;
}

/**
 * The "node" installer. The release's `node_modules` links to a directory of
 * `<deps>` that holds the Kiln packages the node provides (`@kiln/sdk`,
 * `@kiln/service`, `@kiln/protocol`, as links to the agent's own install) and
 * the package's other dependencies. Those come from `npm ci --omit=dev`,
 * run once per lockfile per agent install per node (with one npm cache shared
 * by all), so a redeploy with an unchanged lockfile installs nothing. The
 * provided packages are never installed, whatever the package's manifest or
 * lockfile says of them. A package that ships its own node_modules is left as
 * it is. With dependencies but no lockfile it fails: versions would differ
 * from node to node.
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
  const nodeModules = path.join(dir, "node_modules");
  const present = await fs.promises.lstat(nodeModules).catch(() => undefined);
  if (present && !present.isSymbolicLink()) {
    o.log(`${dir} ships its own node_modules; not running npm`);
    return env;
  }
  // Keyed by the agent's install too: an agent installed elsewhere links its own packages.
  const provided = JSON.stringify([...providedPackageDirs()]);
  let key: string;
  let install: (signal: AbortSignal) => Promise<void>;
  if (dependenciesToInstall(manifest).length === 0) {
    key = `provided-${sha256Hex(provided)}`;
    install = (signal) => linkProvidedOnly(key, { ...o, signal });
  } else {
    const lockfile = await findLockfile(dir);
    if (!lockfile)
      throw new Error(
        "package.json lists dependencies but the package has no package-lock.json " +
          "(run npm install and ship the lockfile, so every node installs the same versions)",
      );
    key = sha256Hex(`${await fs.promises.readFile(lockfile, "utf8")}\n${provided}`);
    install = (signal) => npmCi(dir, lockfile, key, { ...o, signal });
  }
  const depsDir = path.join(o.layout.deps, key);
  if (await exists(depsDir)) o.log(`dependencies ${key} are installed already`);
  else await joinFlight(`npm ${o.layout.root} ${key}`, o.signal, install);
  await linkAtomically(path.join(depsDir, "node_modules"), nodeModules);
  return env;
}

async function readManifest(dir: string): Promise<NodeManifest> {
  let text: string;
  try {
    text = await fs.promises.readFile(path.join(dir, "package.json"), "utf8");
  } catch {
    throw new Error('the "node" installer needs a package.json at the root of the package, and there is none');
  }
  try {
    return JSON.parse(text) as NodeManifest;
  } catch (err) {
    throw new Error(`package.json is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** Runs `npm ci` in a staging dir, adds the provided packages and renames it to `<deps>/<key>` on success. */
async function npmCi(
  dir: string,
  lockfile: string,
  key: string,
  o: NodeInstallOptions & { signal: AbortSignal },
): Promise<void> {
  const staging = tempPath(o.layout.deps);
  await fs.promises.mkdir(staging);
  try {
    const links = await stage(dir, lockfile, staging);
    const logFile = path.join(o.layout.logs, `${key}.log`);
    o.log(`running npm ci for lockfile ${key} (log: ${logFile})`);
    const args = ["ci", "--omit=dev", "--no-audit", "--no-fund", "--cache", o.layout.npmCache];
    const outcome = await runLogged(npmCommand(), args, staging, logFile, o);
    if (outcome !== "ok") {
      throw new Error(`npm ci ${outcome} (log: ${logFile}); last lines:\n${await tail(logFile)}`);
    }
    await Promise.all(links.map((link) => fs.promises.unlink(link)));
    await linkProvided(path.join(staging, "node_modules"));
    await renameIntoPlace(staging, path.join(o.layout.deps, key));
  } finally {
    await fs.promises.rm(staging, { recursive: true, force: true });
  }
}

/** `<deps>/<key>/node_modules` with only the provided packages, for a package with nothing else to install. */
async function linkProvidedOnly(key: string, o: NodeInstallOptions & { signal: AbortSignal }): Promise<void> {
  const staging = tempPath(o.layout.deps);
  try {
    await linkProvided(path.join(staging, "node_modules"));
    await renameIntoPlace(staging, path.join(o.layout.deps, key));
  } finally {
    await fs.promises.rm(staging, { recursive: true, force: true });
  }
}

/** Links `<nodeModules>/@kiln/<name>` to the agent's own package directories, replacing what npm put there. */
async function linkProvided(nodeModules: string): Promise<void> {
  for (const [name, target] of providedPackageDirs()) {
    const link = path.join(nodeModules, name);
    await fs.promises.mkdir(path.dirname(link), { recursive: true });
    await fs.promises.rm(link, { recursive: true, force: true });
    await fs.promises.symlink(target, link);
  }
}

/**
 * Mirrors the release into `staging` as symlinks, except the package.json and
 * lockfile, written as npm sees them on a node (no scripts, no provided packages);
 * returns the links.
 */
async function stage(dir: string, lockfile: string, staging: string): Promise<string[]> {
  const links: string[] = [];
  const lockName = path.basename(lockfile);
  for (const name of await fs.promises.readdir(dir)) {
    if (name === "node_modules" || name === "package.json" || name === lockName) continue;
    const link = path.join(staging, name);
    await fs.promises.symlink(path.join(dir, name), link);
    links.push(link);
  }
  const manifest = JSON.parse(await fs.promises.readFile(path.join(dir, "package.json"), "utf8")) as NodeManifest;
  await fs.promises.writeFile(path.join(staging, "package.json"), JSON.stringify(manifestForNode(manifest), null, 2));
  await fs.promises.writeFile(
    path.join(staging, lockName),
    lockfileForNode(await fs.promises.readFile(lockfile, "utf8")),
  );
  return links;
}

/** Points `link` at `target`, replacing an older link in one rename. */
async function linkAtomically(target: string, link: string): Promise<void> {
  if ((await fs.promises.readlink(link).catch(() => undefined)) === target) return;
  const temp = tempPath(path.dirname(link));
  await fs.promises.symlink(target, temp);
  await fs.promises.rename(temp, link);
}
