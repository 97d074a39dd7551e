// The Kiln packages a node provides to the code it runs. Kept free of other imports: kiln-run's
// module resolution hooks load this file on Node's hooks thread.
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The packages every node provides from its own install, to kiln-run projects
 * and to `node`-installer packages alike: never installed from a project's
 * manifest or lockfile, so a project can depend on them without their being
 * on a registry, and its ObjectRefs and errors are the node's own.
 */
export const PROVIDED_PACKAGES: readonly string[] = ["@kiln/sdk", "@kiln/service", "@kiln/protocol"];

/** Whether `specifier` names one of the PROVIDED_PACKAGES or a subpath of one. */
export function isProvided(specifier: string): boolean {
  return PROVIDED_PACKAGES.some((name) => specifier === name || specifier.startsWith(`${name}/`));
}

let dirs: ReadonlyMap<string, string> | undefined;

/**
 * Each provided package's directory in this process's own install, symlinks
 * resolved (in a checkout, `packages/sdk`; in an installed `kiln`, its
 * `node_modules/@kiln/sdk`).
 */
export function providedPackageDirs(): ReadonlyMap<string, string> {
  dirs ??= new Map(PROVIDED_PACKAGES.map((name) => [name, packageDirOf(name)]));
  return dirs;
}

/** The directory holding the package.json of `name`, found from the file its main export resolves to. */
function packageDirOf(name: string): string {
  const entry = fileURLToPath(import.meta.resolve(name));
  for (let dir = path.dirname(entry); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const manifest = path.join(dir, "package.json");
    if (!fs.existsSync(manifest)) continue;
    if ((JSON.parse(fs.readFileSync(manifest, "utf8")) as { name?: unknown }).name === name) return dir;
  }
  throw new Error(`cannot find the package directory of ${name} (its entry is ${entry})`);
}
