import { checkDependencySpec } from "@kiln/protocol/runner";
import { processExists, sha256Hex } from "@kiln/protocol";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  exists,
  packageLayout,
  prepareLayout,
  renameIntoPlace,
  tempPath,
  type PackageLayout,
} from "../../package-store/layout.js";
import { npmCommand, runLogged, tail } from "../../package-store/npm.js";
import { LOCKFILES } from "../../package-store/node-manifest.js";
import { isProvided } from "../../package-store/provided.js";

// Under the agent's 60 s bound on OnSessionEnter, so the failure names npm rather than a timeout.
export const INSTALL_TIMEOUT_MS = 50_000;
const LOCK_POLL_MS = 100;
const PINNED_VERSION = /^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?$/;

interface Manifest {
  dependencies?: Record<string, string>;
}

interface LockEntry {
  version?: string;
  name?: string;
}

/**
 * The npm specs a session needs: the project's own dependencies (package.json,
 * at the lockfile's versions when there is one, except the Kiln packages kiln-run provides) and the
 * service's `dependencies`, sorted and without duplicates. Relative `file:`
 * specs are made absolute against the project.
 *
 * @example
 * await dependencySpecs("/work/packages/releases/9f…", ["left-pad@1.3.0"]) // ["left-pad@1.3.0", "lodash@4.17.21"]
 */
export async function dependencySpecs(appDir: string, extra: readonly string[]): Promise<string[]> {
  const manifest = await readJson<Manifest>(path.join(appDir, "package.json"), "package.json");
  const lock = await readLockfile(appDir);
  const specs = Object.entries(manifest?.dependencies ?? {})
    .filter(([name]) => !isProvided(name))
    .map(([name, range]) => {
      const locked = lock[`node_modules/${name}`];
      const pinned = locked?.version && PINNED_VERSION.test(locked.version) && (locked.name ?? name) === name;
      return checkDependencySpec(`${name}@${pinned ? locked.version : absoluteFileSpec(appDir, range)}`, name);
    });
  extra.forEach((spec, i) => specs.push(checkDependencySpec(spec, `dependencies[${i}]`)));
  return [...new Set(specs)].sort();
}

/**
 * Installs what `dependencySpecs` lists, once per set of specs per node:
 * into `<packages>/deps/runner-<hash>` (next to the agent's own installs,
 * through a temp dir renamed into place), with the agent's npm cache. An
 * executor that finds another one installing the same set (a lock file
 * naming a live process) waits for it instead of installing too. Returns the
 * directory whose node_modules holds them, or undefined when there is
 * nothing to install.
 *
 * @example
 * const depsDir = await ensureDependencies(process.env.KILN_APP_DIR!, spec.dependencies);
 */
export async function ensureDependencies(appDir: string, extra: readonly string[]): Promise<string | undefined> {
  const specs = await dependencySpecs(appDir, extra);
  if (specs.length === 0) return undefined;
  const key = sha256Hex(
    JSON.stringify({ specs, abi: process.versions.modules, platform: process.platform, arch: process.arch }),
  ).slice(0, 32);
  const layout = layoutFor(appDir);
  const dir = path.join(layout.deps, `runner-${key}`);
  if (await exists(dir)) return dir;
  await prepareLayout(layout);
  const lock = path.join(layout.deps, `.lock-runner-${key}`);
  if (!(await takeLock(lock, dir))) return dir;
  try {
    if (!(await exists(dir))) await install(specs, key, dir, layout);
  } finally {
    await fs.rm(lock, { force: true });
  }
  return dir;
}

/**
 * Takes the install lock (true), or waits until whoever holds it has
 * installed `dir` (false). A lock whose process is gone is broken.
 */
async function takeLock(lock: string, dir: string): Promise<boolean> {
  const deadline = Date.now() + INSTALL_TIMEOUT_MS;
  for (;;) {
    try {
      await fs.writeFile(lock, String(process.pid), { flag: "wx" });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    if (await exists(dir)) return false;
    const holder = Number(await fs.readFile(lock, "utf8").catch(() => ""));
    if (holder > 0 && !processExists(holder)) await fs.rm(lock, { force: true });
    if (Date.now() > deadline)
      throw new Error(`another executor (pid ${holder}) has been installing ${path.basename(dir)} for too long`);
    await sleep(LOCK_POLL_MS);
  }
}

async function install(specs: string[], key: string, dir: string, layout: PackageLayout): Promise<void> {
  const staging = tempPath(layout.deps);
  await fs.mkdir(staging);
  try {
    await fs.writeFile(
      path.join(staging, "package.json"),
      JSON.stringify({ name: "kiln-run-dependencies", private: true }, null, 2),
    );
    const logFile = path.join(layout.logs, `runner-${key}.log`);
    const args = ["install", "--omit=dev", "--no-audit", "--no-fund", "--cache", layout.npmCache, "--", ...specs];
    const outcome = await runLogged(npmCommand(), args, staging, logFile, {
      installTimeoutMs: INSTALL_TIMEOUT_MS,
      signal: new AbortController().signal,
    });
    if (outcome !== "ok")
      throw new Error(
        `npm install ${specs.join(" ")} ${outcome} (log: ${logFile}); last lines:\n${await tail(logFile)}`,
      );
    await renameIntoPlace(staging, dir);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

/**
 * The agent's package layout when KILN_APP_DIR is one of its releases
 * (`<work>/packages/releases/<sha>`), else one under the temp dir.
 */
function layoutFor(appDir: string): PackageLayout {
  const releases = path.dirname(appDir);
  if (path.basename(releases) === "releases") return packageLayout(path.dirname(path.dirname(releases)));
  return packageLayout(path.join(os.tmpdir(), "kiln-run"));
}

function absoluteFileSpec(appDir: string, range: string): string {
  const m = /^(file|link):(.*)$/.exec(range);
  if (!m || path.isAbsolute(m[2]!)) return range;
  return `${m[1]}:${path.resolve(appDir, m[2]!)}`;
}

async function readLockfile(appDir: string): Promise<Record<string, LockEntry>> {
  for (const name of LOCKFILES) {
    const lock = await readJson<{ packages?: Record<string, LockEntry> }>(path.join(appDir, name), name);
    if (lock) return lock.packages ?? {};
  }
  return {};
}

async function readJson<T>(file: string, what: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new Error(`the project's ${what} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}
