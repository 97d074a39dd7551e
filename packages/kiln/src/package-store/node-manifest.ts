import * as fs from "node:fs/promises";
import * as path from "node:path";
import { isProvided } from "./provided.js";

/** The lockfiles npm installs exactly from, in the order npm prefers them. */
export const LOCKFILES = ["npm-shrinkwrap.json", "package-lock.json"];

const DEPENDENCY_FIELDS = ["dependencies", "optionalDependencies", "devDependencies", "peerDependencies"] as const;

/** The parts of a package.json that say what a node installs for it. */
export interface NodeManifest {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  scripts?: unknown;
}

interface Lockfile {
  packages?: Record<string, NodeManifest>;
  /** lockfileVersion 1 and 2 also keep the tree here, keyed by package name. */
  dependencies?: Record<string, unknown>;
}

/**
 * The packages a node installs for a `node`-installer package: its
 * dependencies and optionalDependencies, less the Kiln packages the node
 * provides (dev dependencies are omitted on nodes).
 */
export function dependenciesToInstall(manifest: NodeManifest): string[] {
  const names = Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies });
  return names.filter((name) => !isProvided(name)).sort();
}

/** The lockfile in `dir` that npm would use, or undefined when there is none. */
export async function findLockfile(dir: string): Promise<string | undefined> {
  for (const name of LOCKFILES) {
    const file = path.join(dir, name);
    if (
      await fs.stat(file).then(
        (s) => s.isFile(),
        () => false,
      )
    )
      return file;
  }
  return undefined;
}

/** `manifest` as npm sees it on a node: no provided packages in any dependency field, no scripts (the package is built). */
export function manifestForNode(manifest: NodeManifest): NodeManifest {
  const out: NodeManifest = { ...manifest };
  delete out.scripts;
  for (const field of DEPENDENCY_FIELDS) {
    const deps = out[field];
    if (deps) out[field] = withoutProvided(deps);
  }
  return out;
}

/**
 * A lockfile's text without the provided packages: gone from the root
 * package's dependency fields and from the tree. What only they needed is left
 * unreachable, and `npm ci` installs nothing unreachable; so a Kiln package
 * locked at a spec no node can fetch (a `file:` tarball outside the project)
 * is never fetched.
 */
export function lockfileForNode(text: string): string {
  const lock = JSON.parse(text) as Lockfile;
  const packages = lock.packages ?? {};
  if (packages[""]) packages[""] = manifestForNode(packages[""]);
  for (const key of Object.keys(packages)) if (isProvided(key.replace(/^.*node_modules\//, ""))) delete packages[key];
  for (const name of Object.keys(lock.dependencies ?? {})) if (isProvided(name)) delete lock.dependencies![name];
  return JSON.stringify(lock, null, 2);
}

function withoutProvided(deps: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(deps).filter(([name]) => !isProvided(name)));
}
