import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidArgumentError } from "@kiln/protocol";

/**
 * The project a Runner packages: the nearest directory at or above `from`
 * that has a package.json.
 *
 * @example
 * findProjectRoot(process.cwd()) // "/home/me/pi" when run from /home/me/pi/src
 */
export function findProjectRoot(from: string): string {
  let dir = path.resolve(from);
  for (;;) {
    if (fs.existsSync(path.join(dir, "package.json"))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir)
      throw new InvalidArgumentError("project", `no package.json in ${from} or above it; pass options.project`);
    dir = parent;
  }
}

/** Checks a project directory given by the caller and returns its absolute path. */
export function checkProjectDir(dir: string): string {
  const root = path.resolve(dir);
  if (!fs.statSync(root, { throwIfNoEntry: false })?.isDirectory())
    throw new InvalidArgumentError("project", `${dir} is not a directory`);
  return root;
}

/** True when `inner` is `outer` or below it (both absolute, symlinks resolved). */
export function isInside(inner: string, outer: string): boolean {
  const rel = path.relative(outer, inner);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}

function realpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

// TypeScript projects import "./x.js" for "./x.ts"; accept the name as written in an import.
const SOURCE_FOR_OUTPUT: ReadonlyArray<[RegExp, string]> = [
  [/\.js$/, ".ts"],
  [/\.mjs$/, ".mts"],
  [/\.cjs$/, ".cts"],
  [/\.jsx$/, ".tsx"],
];

/**
 * A module of the project, as the POSIX path relative to the project root
 * that the executor loads. `spec` is relative to the root, absolute, or a
 * file URL; `x.js` finds `x.ts` when only that exists. Throws
 * InvalidArgumentError naming `module` when the file is outside the project
 * (also through a symlink) or does not exist.
 *
 * @example
 * resolveProjectModule("/home/me/pi", "src/pi.js") // "src/pi.ts"
 */
export function resolveProjectModule(root: string, spec: string | URL): string {
  const shown = String(spec);
  let absolute: string;
  try {
    absolute = spec instanceof URL || spec.startsWith("file:") ? fileURLToPath(spec) : path.resolve(root, spec);
  } catch (err) {
    throw new InvalidArgumentError("module", `"${shown}" is not a path or file URL: ${(err as Error).message}`);
  }
  const realRoot = realpath(root);
  if (!isInside(path.resolve(absolute), path.resolve(root)) && !isInside(path.resolve(absolute), realRoot))
    throw new InvalidArgumentError("module", `"${shown}" is outside the project ${root}`);
  const candidates = [
    absolute,
    ...SOURCE_FOR_OUTPUT.filter(([re]) => re.test(absolute)).map(([re, ext]) => absolute.replace(re, ext)),
  ];
  const found = candidates.find((c) => fs.statSync(c, { throwIfNoEntry: false })?.isFile());
  if (!found) throw new InvalidArgumentError("module", `"${shown}" does not exist in the project ${root}`);
  const real = realpath(found);
  if (!isInside(real, realRoot))
    throw new InvalidArgumentError("module", `"${shown}" leads outside the project ${root} (through a symlink)`);
  return path.relative(realRoot, real).split(path.sep).join("/");
}

/**
 * True inside a Runner executor running this very project: the project is
 * the installed package (KILN_APP_DIR), so it needs no packing.
 */
export function runsInsideExecutor(root: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const appDir = env.KILN_APP_DIR;
  return appDir !== undefined && appDir !== "" && isInside(realpath(root), realpath(appDir));
}
