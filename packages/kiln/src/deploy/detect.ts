import * as fs from "node:fs/promises";
import * as path from "node:path";
import { dependenciesToInstall, findLockfile, type NodeManifest } from "../package-store/node-manifest.js";

/** `kiln deploy` could not tell what to run or how to package it; exits with ExitCode.Usage. */
export class DetectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DetectionError";
  }
}

/** What the user points `kiln deploy` at, and what to run once it is installed. */
export interface DetectedPackage {
  kind: "node-project" | "directory" | "archive" | "executable";
  /** Absolute path of what is packaged or uploaded. */
  source: string;
  /** Installer the agent runs: `node` installs dependencies from the lockfile; `binary` marks files executable. */
  installer: "node" | "binary";
  command: string;
  arguments: string[];
  /** How the command was found, for `--dry-run`. */
  reason: string;
}

/** The user's overrides; a given command skips command detection. */
export interface DetectOptions {
  command?: string;
  arguments?: string[];
  installer?: "node" | "binary";
}

const ARCHIVE = /\.(tar\.gz|tgz|zip)$/i;
// Paths inside a release are written through this variable, so they hold whatever the working directory.
const APP_DIR = "${KILN_APP_DIR}";

interface PackageJson extends Omit<NodeManifest, "scripts"> {
  name?: unknown;
  bin?: unknown;
  scripts?: { start?: unknown };
}

/**
 * Decides how to package `target` and what command runs it: a Node project
 * (a directory with package.json: its `bin`, else `npm start`'s script), a
 * directory with one executable (top level or in `bin/`), an archive, or a
 * single executable file. Throws DetectionError saying what to pass instead.
 *
 * @example
 * const d = await detectPackage("./my-service", {});
 * // { kind: "node-project", command: "node", arguments: ["${KILN_APP_DIR}/bin/serve.js"], installer: "node", … }
 */
export async function detectPackage(target: string, o: DetectOptions): Promise<DetectedPackage> {
  const source = path.resolve(target);
  const stat = await fs.stat(source).catch(() => undefined);
  if (!stat) throw new DetectionError(`${target} does not exist`);
  const given = (installer: "node" | "binary", kind: DetectedPackage["kind"]): DetectedPackage | undefined =>
    o.command
      ? {
          kind,
          source,
          installer: o.installer ?? installer,
          command: o.command,
          arguments: o.arguments ?? [],
          reason: "--command",
        }
      : undefined;

  if (stat.isFile() && ARCHIVE.test(source)) {
    const detected = given("binary", "archive");
    if (!detected) throw new DetectionError(`${target} is an archive: pass --command (what to run inside it)`);
    return detected;
  }
  if (stat.isFile()) {
    if ((stat.mode & 0o111) === 0) throw new DetectionError(`${target} is a file but not executable (chmod +x it)`);
    return (
      given("binary", "executable") ?? {
        kind: "executable",
        source,
        installer: o.installer ?? "binary",
        command: `${APP_DIR}/${path.basename(source)}`,
        arguments: o.arguments ?? [],
        reason: "a single executable file",
      }
    );
  }
  if (!stat.isDirectory()) throw new DetectionError(`${target} is neither a directory, an archive nor an executable`);

  const manifest = await readPackageJson(source);
  if (manifest) {
    const detected = given("node", "node-project") ?? nodeCommand(manifest, source, o);
    if (detected.installer === "node") await requireLockfile(manifest, source);
    return detected;
  }
  return given("binary", "directory") ?? (await executableIn(source, target, o));
}

async function readPackageJson(dir: string): Promise<PackageJson | undefined> {
  const text = await fs.readFile(path.join(dir, "package.json"), "utf8").catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== "object" || parsed === null) throw new Error("not an object");
    return parsed as PackageJson;
  } catch (err) {
    throw new DetectionError(`${path.join(dir, "package.json")} is not valid JSON: ${(err as Error).message}`);
  }
}

function nodeCommand(manifest: PackageJson, source: string, o: DetectOptions): DetectedPackage {
  const base = { kind: "node-project" as const, source, installer: o.installer ?? ("node" as const) };
  const bin = binEntry(manifest);
  if (bin) {
    return {
      ...base,
      command: "node",
      arguments: [`${APP_DIR}/${path.posix.normalize(bin.file)}`, ...(o.arguments ?? [])],
      reason: `package.json bin${bin.name ? ` "${bin.name}"` : ""}`,
    };
  }
  const start = manifest.scripts?.start;
  if (typeof start === "string" && start.trim()) {
    return { ...base, command: "sh", arguments: ["-c", start], reason: "package.json scripts.start" };
  }
  throw new DetectionError(
    `${path.join(source, "package.json")} has neither "bin" nor "scripts.start": pass --command (e.g. --command node --argument '\${KILN_APP_DIR}/main.js')`,
  );
}

/**
 * A package that the node installer would install dependencies for must ship
 * a lockfile: without one every node would fail to bind it (versions would
 * differ between nodes), so it is refused here, before anything is uploaded.
 */
async function requireLockfile(manifest: PackageJson, source: string): Promise<void> {
  const deps = dependenciesToInstall(manifest);
  if (deps.length === 0 || (await findLockfile(source))) return;
  throw new DetectionError(
    `${path.join(source, "package.json")} lists dependencies (${deps.join(", ")}) but there is no ` +
      `package-lock.json or npm-shrinkwrap.json beside it: run npm install there and deploy again, so every ` +
      `node installs the same versions (the Kiln packages need none: nodes provide them)`,
  );
}

/** package.json `bin`: a string, or the entry named like the package, or the only entry. */
function binEntry(manifest: PackageJson): { name?: string; file: string } | undefined {
  const { bin, name } = manifest;
  if (typeof bin === "string" && bin) return { file: bin };
  if (typeof bin !== "object" || bin === null) return undefined;
  const entries = Object.entries(bin as Record<string, unknown>).filter(
    (e): e is [string, string] => typeof e[1] === "string",
  );
  const own = entries.find(([n]) => n === name) ?? (entries.length === 1 ? entries[0] : undefined);
  if (own) return { name: own[0], file: own[1] };
  if (entries.length > 1)
    throw new DetectionError(
      `package.json has ${entries.length} bin entries (${entries.map(([n]) => n).join(", ")}) and none is named like the package: pass --command`,
    );
  return undefined;
}

async function executableIn(source: string, target: string, o: DetectOptions): Promise<DetectedPackage> {
  const candidates: string[] = [];
  for (const sub of ["bin", "."]) {
    const dir = path.join(source, sub);
    const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (!e.isFile()) continue;
      const mode = (await fs.stat(path.join(dir, e.name))).mode;
      if (mode & 0o111) candidates.push(sub === "." ? e.name : `${sub}/${e.name}`);
    }
    if (candidates.length > 0) break;
  }
  if (candidates.length !== 1) {
    const found =
      candidates.length === 0 ? "no executable" : `${candidates.length} executables (${candidates.join(", ")})`;
    throw new DetectionError(`${target} has no package.json and ${found} in bin/ or at its top level: pass --command`);
  }
  return {
    kind: "directory",
    source,
    installer: o.installer ?? "binary",
    command: `${APP_DIR}/${candidates[0]}`,
    arguments: o.arguments ?? [],
    reason: `the only executable, ${candidates[0]}`,
  };
}
