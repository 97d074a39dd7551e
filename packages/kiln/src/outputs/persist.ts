import {
  FailedPreconditionError,
  ignoreNotFound,
  InvalidArgumentError,
  isObjectRef,
  ObjectRef,
  encodeValue,
  formatBytes,
  sha256Hex,
} from "@kiln/protocol";
import { type ObjectCache, type ObjectStat } from "@kiln/sdk";
import {
  fileExtension,
  jobKeys,
  matchesPattern,
  MAX_REPORTED_ENTRIES,
  validateLevels,
  validateRelativePath,
  type DeclaredOutput,
  type OutputLevel,
  type OutputReport,
  type PersistedOutput,
} from "@kiln/protocol/jobs";
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import type { MatchedOutput, MatchResult } from "./match.js";

/**
 * Writes a job's matched output files to the object cache, then the manifest
 * (the report without `manifest`) last: a manifest names exactly the object
 * versions it describes, and its presence means every one of them is there.
 */

export interface PersistTarget {
  cache: ObjectCache;
  application: string;
  sessionId: string;
  taskId: string;
  workDir: string;
  /** The levels in force, most restrictive first (the job's own, validated again here). */
  levels: OutputLevel[];
}

type Refusal = { path: string; reason: string };

/** A matched file that passed every check, with the digest read through a handle that never followed a link. */
interface PlannedFile {
  path: string;
  output: DeclaredOutput;
  alsoMatched: DeclaredOutput[];
  key: string;
  size: number;
  sha256: string;
}

const READ_CHUNK = 1024 * 1024;
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/**
 * Persists the matched files and returns the output report. Each file is
 * opened again without following links and must still be a regular file
 * inside `workDir`; one over its level's `maxFileBytes` or with an extension
 * the level does not allow is refused (reported, not written). The subset
 * rule is checked before anything is written. Files go to
 * `jobKeys.output(…)`, then the manifest to `jobKeys.manifest(…)`. Running it
 * again over the same files rewrites nothing and returns the same report.
 * Matched files are persisted even when some patterns matched nothing (the
 * job still fails).
 *
 * @example
 * const { files, refused } = newEntries(before, await takeListing(workDir));
 * const report = await persistOutputs(
 *   { cache, application: "kiln-exec", sessionId, taskId, workDir, levels: spec.levels },
 *   matchOutputs(files, validateOutputSpec(spec.outputs, spec.levels)),
 *   refused,
 * );
 */
export async function persistOutputs(
  target: PersistTarget,
  match: MatchResult,
  refused: Refusal[],
): Promise<OutputReport> {
  const levels = validateLevels(target.levels);
  const root = await fsp.realpath(target.workDir);
  const keyOf = (file: string) => jobKeys.output(target.application, target.sessionId, target.taskId, sha256Hex(file));
  const manifestKey = jobKeys.manifest(target.application, target.sessionId, target.taskId);

  const matched = [...match.matched].sort((a, b) => compare(a.path, b.path));
  checkSubsetRule(matched, levels);
  const planned: PlannedFile[] = [];
  const refusals: Refusal[] = refused.map((r) => ({ path: r.path, reason: r.reason }));
  for (const m of matched) {
    const checked = await checkFile(root, m.path, levels[m.output.levelRank]!);
    if (typeof checked === "string") refusals.push({ path: m.path, reason: checked });
    else planned.push({ path: m.path, output: m.output, alsoMatched: m.alsoMatched, key: keyOf(m.path), ...checked });
  }

  const previous = await readManifest(target.cache, manifestKey);
  const outputs: PersistedOutput[] = [];
  const pending: PlannedFile[] = [];
  for (const file of planned) {
    const ref = await unchangedRef(target.cache, previous?.outputs.get(file.path), file);
    if (ref) outputs.push(persisted(file, ref));
    else pending.push(file);
  }
  const plannedPaths = new Set(planned.map((f) => f.path));
  const orphans = [...(previous?.outputs.values() ?? [])].filter((o) => !plannedPaths.has(o.path));
  // The old manifest must not outlive the versions it names: it goes before any of them is replaced or deleted.
  const dropManifest = previous !== undefined && (pending.length > 0 || orphans.length > 0);
  if (dropManifest) await deleteIfPresent(target.cache, manifestKey);
  for (const orphan of orphans) await deleteIfPresent(target.cache, orphan.ref.key);
  for (const file of pending) {
    const ref = await target.cache.uploadObject(file.key, path.join(root, ...file.path.split("/")));
    if (ref.sha256 !== file.sha256 || ref.size !== file.size)
      throw new FailedPreconditionError(
        `output ${file.path} changed while it was being persisted (checked ${file.size} bytes, sha256 ${file.sha256}; ` +
          `uploaded ${ref.size} bytes, sha256 ${ref.sha256}): is a process of the job still writing?`,
      );
    outputs.push(persisted(file, ref));
  }
  outputs.sort((a, b) => compare(a.path, b.path));

  const unmatched = capped(match.unmatchedOutputs);
  const notCollected = capped(refusals.sort((a, b) => compare(a.path, b.path) || compare(a.reason, b.reason)));
  const content: OutputReport = {
    outputs,
    unmatchedPatterns: match.unmatchedPatterns.map(declaredOutput),
    unmatchedOutputs: unmatched.listed.map((u) =>
      u.hint === undefined ? { path: u.path } : { path: u.path, hint: u.hint },
    ),
    ...(unmatched.omitted ? { unmatchedOutputsOmitted: unmatched.omitted } : {}),
    refused: notCollected.listed,
    ...(notCollected.omitted ? { refusedOmitted: notCollected.omitted } : {}),
  };
  const bytes = encodeValue(content, { path: "manifest" });
  const manifest =
    previous && !dropManifest && previous.stat.sha256 === sha256Hex(bytes) && previous.stat.size === bytes.byteLength
      ? ObjectRef.from({
          // A stat carries no endpoint: the outputs' refs name the one the cache advertises; with none, the configured one.
          endpoint: outputs[0]?.ref.endpoint ?? target.cache.endpoint,
          key: manifestKey,
          version: previous.stat.version,
          size: previous.stat.size,
          sha256: previous.stat.sha256,
        })
      : await target.cache.putObject(manifestKey, content);
  return { ...content, manifest };
}

/** The file's size and digest, or why it is refused. */
async function checkFile(
  root: string,
  rel: string,
  level: OutputLevel,
): Promise<{ size: number; sha256: string } | string> {
  const abs = path.join(root, ...rel.split("/"));
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(abs, OPEN_FLAGS);
  } catch (err) {
    switch ((err as NodeJS.ErrnoException).code) {
      case "ENOENT":
        return "it vanished before it could be persisted";
      case "ELOOP":
        return "it became a symbolic link before it could be persisted";
      case "ENXIO": // a socket
        return "it is no longer a regular file";
      case "EACCES":
      case "EPERM":
        return "it could not be read (permission denied)";
      default:
        throw err;
    }
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) return "it is no longer a regular file";
    // O_NOFOLLOW guards the last component only; a directory swapped for a link would show here.
    if ((await fsp.realpath(abs)) !== abs) return "a directory on its path became a symbolic link";
    if (st.size > level.maxFileBytes)
      return `${st.size} bytes is over the ${level.name} limit of ${formatBytes(level.maxFileBytes)} (${level.maxFileBytes} bytes)`;
    const ext = fileExtension(rel);
    if (level.extensions.length > 0 && !level.extensions.includes(ext))
      return `${level.name} does not allow the extension ${JSON.stringify(ext)} (allowed: ${level.extensions.join(" ")})`;
    const hash = createHash("sha256");
    const buffer = Buffer.allocUnsafe(Math.min(READ_CHUNK, Math.max(st.size, 1)));
    let size = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, size);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      size += bytesRead;
      if (size > level.maxFileBytes) return `it grew past the ${level.name} limit while it was being read`;
    }
    return { size, sha256: hash.digest("hex") };
  } finally {
    await handle.close();
  }
}

/**
 * The subset rule: whoever may read a level may read every less restrictive
 * one, so each level's files must be among those written for the levels
 * above it. With every file written once, at a level in force, matching its
 * pattern, that holds by construction; this refuses a match that breaks it
 * (a file listed twice, which could put it at two levels, a level not in
 * force, a path that is not the pattern's) before anything is read or written.
 */
function checkSubsetRule(matched: readonly MatchedOutput[], levels: readonly OutputLevel[]): void {
  const seen = new Set<string>();
  for (const { path: file, output } of matched) {
    const { level, levelRank, name, pattern } = output;
    if (levels[levelRank]?.name !== level)
      throw new InvalidArgumentError(
        `outputs.${level}.${name}`,
        `level "${level}" is not level ${levelRank} of the levels in force (${levels.map((l) => l.name).join(", ")}); nothing was written`,
      );
    validateRelativePath("matched.path", file);
    if (!matchesPattern(pattern, file))
      throw new InvalidArgumentError(
        "matched.path",
        `"${file}" does not match pattern "${pattern}"; nothing was written`,
      );
    if (seen.has(file)) throw new InvalidArgumentError("matched", `"${file}" is matched twice; nothing was written`);
    seen.add(file);
  }
}

interface PreviousManifest {
  stat: ObjectStat;
  outputs: Map<string, PersistedOutput>;
}

/** The manifest a previous persist of this task wrote, if any. One this code cannot read counts as naming nothing. */
async function readManifest(cache: ObjectCache, key: string): Promise<PreviousManifest | undefined> {
  const stat = await cache.statObject(key).catch(ignoreNotFound);
  if (!stat) return undefined;
  const value = await cache.getObject(key).catch(ignoreNotFound);
  const outputs = new Map<string, PersistedOutput>();
  const listed = (value as { outputs?: unknown } | undefined)?.outputs;
  if (Array.isArray(listed))
    for (const o of listed as Partial<PersistedOutput>[])
      if (typeof o?.path === "string" && isObjectRef(o.ref)) outputs.set(o.path, o as PersistedOutput);
  return { stat, outputs };
}

/** The previous ref of a file when the cache still holds that very version with the same bytes. */
async function unchangedRef(
  cache: ObjectCache,
  previous: PersistedOutput | undefined,
  file: PlannedFile,
): Promise<ObjectRef | undefined> {
  const ref = previous?.ref;
  if (!ref || ref.key !== file.key || ref.sha256 !== file.sha256 || ref.size !== file.size) return undefined;
  const stat = await cache.statObject(ref.key).catch(ignoreNotFound);
  return stat?.version === ref.version && stat.sha256 === ref.sha256 ? ref : undefined;
}

async function deleteIfPresent(cache: ObjectCache, key: string): Promise<void> {
  await cache.deleteObjects(key).catch(ignoreNotFound);
}

/** A report's list as it is reported: its first MAX_REPORTED_ENTRIES, and how many more there were (0 when none). */
function capped<T>(list: readonly T[]): { listed: T[]; omitted: number } {
  return { listed: list.slice(0, MAX_REPORTED_ENTRIES), omitted: Math.max(0, list.length - MAX_REPORTED_ENTRIES) };
}

function persisted(file: PlannedFile, ref: ObjectRef): PersistedOutput {
  return {
    path: file.path,
    ...declaredOutput(file.output),
    size: file.size,
    sha256: file.sha256,
    ref,
    alsoMatched: file.alsoMatched.map(declaredOutput),
  };
}

function declaredOutput(d: DeclaredOutput): { name: string; level: string; pattern: string } {
  return { name: d.name, level: d.level, pattern: d.pattern };
}

/** Code-unit order, the same on every machine (localeCompare is not). */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
