import { InvalidArgumentError } from "../errors.js";
import { validateName } from "../validation.js";
import type { OutputLevel, OutputSpec } from "./records.js";

/**
 * The rules for a job's declared outputs. Pure string checks, run by the
 * client before it submits a job and again by the executor before it runs
 * one (the executor never trusts what it was sent). See docs/outputs.md.
 */

/** Extensions a reviewer can open safely: the only ones below the most restrictive level. */
const REVIEWABLE_EXTENSIONS = [
  ".csv",
  ".jpg",
  ".jpeg",
  ".png",
  ".svg",
  ".svgz",
  ".html",
  ".txt",
  ".log",
  ".json",
  ".md",
];

function frozenLevel(level: OutputLevel): OutputLevel {
  Object.freeze(level.extensions);
  return Object.freeze(level);
}

/** The levels a job gets unless it names its own, most restrictive first. Frozen: copy them to change one. */
export const DEFAULT_LEVELS: OutputLevel[] = Object.freeze([
  frozenLevel({ name: "highly_sensitive", maxFileBytes: 2 ** 30, extensions: [] }),
  frozenLevel({ name: "moderately_sensitive", maxFileBytes: 16 * 2 ** 20, extensions: [...REVIEWABLE_EXTENSIONS] }),
  frozenLevel({ name: "minimally_sensitive", maxFileBytes: 16 * 2 ** 20, extensions: [...REVIEWABLE_EXTENSIONS] }),
]) as OutputLevel[];

/** Top-level directories of a job's working directory that belong to the executor: never listed, never collected. */
export const RESERVED_DIRS: readonly string[] = Object.freeze([".kiln"]);

/** One declared output, flattened; `levelRank` is its level's index (0 = most restrictive). */
export interface DeclaredOutput {
  level: string;
  levelRank: number;
  name: string;
  pattern: string;
}

const LEVEL_EXTENSION = /^\.[a-z0-9][a-z0-9_-]*$/;
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f]/;
const WINDOWS_ABSOLUTE = /^[A-Za-z]:|^\\\\/;
const OTHER_WILDCARDS: [string, string][] = [
  ["**", '"**"'],
  ["?", '"?"'],
  ["[", '"[" or "]"'],
  ["]", '"[" or "]"'],
  ["{", '"{" or "}"'],
  ["}", '"{" or "}"'],
];

const quote = (text: string) => JSON.stringify(text);

/**
 * Checks a list of levels (most restrictive first) and returns it: at least
 * one, unique names following validateName's rule, a positive whole
 * `maxFileBytes`, and lowercase extensions with their dot (`.csv`).
 *
 * @example
 * validateLevels([{ name: "secret", maxFileBytes: 2 ** 20, extensions: [] }]);
 */
export function validateLevels(levels: OutputLevel[]): OutputLevel[] {
  if (!Array.isArray(levels) || levels.length === 0)
    throw new InvalidArgumentError("levels", "must be a non-empty array, most restrictive level first");
  const seen = new Set<string>();
  levels.forEach((level: unknown, i) => {
    const field = `levels[${i}]`;
    if (typeof level !== "object" || level === null)
      throw new InvalidArgumentError(field, "must be an object { name, maxFileBytes, extensions }");
    const { name, maxFileBytes, extensions } = level as Record<string, unknown>;
    if (typeof name !== "string") throw new InvalidArgumentError(`${field}.name`, "must be a string");
    validateName(`${field}.name`, name);
    if (seen.has(name)) throw new InvalidArgumentError(`${field}.name`, `level ${quote(name)} is listed twice`);
    seen.add(name);
    if (typeof maxFileBytes !== "number" || !Number.isSafeInteger(maxFileBytes) || maxFileBytes <= 0)
      throw new InvalidArgumentError(`${field}.maxFileBytes`, `must be a positive whole number of bytes`);
    if (!Array.isArray(extensions))
      throw new InvalidArgumentError(`${field}.extensions`, "must be an array (empty allows any extension)");
    for (const ext of extensions as unknown[])
      if (typeof ext !== "string" || !LEVEL_EXTENSION.test(ext))
        throw new InvalidArgumentError(
          `${field}.extensions`,
          `${typeof ext === "string" ? quote(ext) : String(ext)} must be a lowercase extension with its dot, like ".csv"`,
        );
  });
  return levels;
}

/**
 * The extension of a path's file name, lowercased, with its dot (`out/a.CSV` → `.csv`);
 * "" when the name has none (`Makefile`, `.env`).
 *
 * @example
 * fileExtension("output/rows.tar.gz") // ".gz"
 */
export function fileExtension(path: string): string {
  const name = path.slice(path.lastIndexOf("/") + 1);
  const dot = name.lastIndexOf(".");
  return dot <= 0 ? "" : name.slice(dot).toLowerCase();
}

/** What is wrong with `path` as a relative path inside a working directory, or undefined. */
function pathProblem(path: string): string | undefined {
  if (path === "") return "is empty";
  if (CONTROL_CHARACTER.test(path)) return "contains a control character";
  if (path.startsWith("/") || WINDOWS_ABSOLUTE.test(path))
    return "is an absolute path; it must be relative to the working directory";
  if (path.includes("\\")) return 'contains a backslash; separate directories with "/"';
  const parts = path.split("/");
  if (parts.includes("")) return 'has an empty component ("a//b" or a trailing "/")';
  if (parts.includes("..")) return 'contains ".."; it must stay inside the working directory';
  if (parts.includes(".")) return 'is not normalised: remove its "." components';
  if (RESERVED_DIRS.includes(parts[0]!)) return `is under ${quote(parts[0]!)}, which is reserved for the executor`;
  return undefined;
}

/**
 * Checks a relative POSIX path inside a working directory (an input file,
 * a file to fetch): the same path rules as patterns, without the wildcard
 * and extension rules. Returns the path.
 *
 * @example
 * validateRelativePath("inputs[0].path", "data/in.csv"); // "data/in.csv"
 * validateRelativePath("inputs[0].path", "../etc/passwd"); // throws: … contains ".." …
 */
export function validateRelativePath(field: string, path: string): string {
  if (typeof path !== "string") throw new InvalidArgumentError(field, "must be a string");
  const problem = pathProblem(path);
  if (problem) throw new InvalidArgumentError(field, `path ${quote(path)} ${problem}`);
  return path;
}

/** What is wrong with `pattern` at `level`, or undefined. */
function patternProblem(pattern: string, level: OutputLevel): string | undefined {
  const pathRule = pathProblem(pattern);
  if (pathRule) return pathRule;
  for (const [text, shown] of OTHER_WILDCARDS)
    if (pattern.includes(text)) return `uses ${shown}; the only wildcard is "*", within one path component`;
  const name = pattern.slice(pattern.lastIndexOf("/") + 1);
  const ext = fileExtension(name);
  if (ext.length <= 1)
    return 'has no file extension: it must end in a file name with a concrete extension, like "output/*.csv"';
  if (ext.includes("*"))
    return `has a wildcard in its extension (${quote(ext)}): it must end in a concrete extension, like "output/*.csv"`;
  if (level.extensions.length > 0 && !level.extensions.includes(ext))
    return `has extension ${quote(ext)}, which ${level.name} does not allow (allowed: ${level.extensions.join(" ")})`;
  return undefined;
}

/**
 * Validates a job's declared outputs against the levels (DEFAULT_LEVELS
 * unless given) and returns them flattened, most restrictive level first.
 * Throws InvalidArgumentError whose field is `outputs.<level>.<name>` and
 * whose message names the pattern and the rule it breaks. An empty spec is
 * valid; overlapping patterns are allowed (the most restrictive level wins).
 *
 * @example
 * validateOutputSpec({ highly_sensitive: { rows: "output/*.csv" }, moderately_sensitive: { summary: "output/summary.txt" } });
 * validateOutputSpec({ highly_sensitive: { rows: "../rows.csv" } });
 * // throws InvalidArgumentError: outputs.highly_sensitive.rows: pattern "../rows.csv" contains ".."; …
 */
export function validateOutputSpec(outputs: OutputSpec, levels: OutputLevel[] = DEFAULT_LEVELS): DeclaredOutput[] {
  validateLevels(levels);
  if (typeof outputs !== "object" || outputs === null || Array.isArray(outputs))
    throw new InvalidArgumentError("outputs", "must be an object { <level>: { <name>: <pattern> } }");
  const declared: DeclaredOutput[] = [];
  const byFoldedPattern = new Map<string, { field: string; pattern: string }>();
  for (const [levelName, named] of Object.entries(outputs)) {
    const levelRank = levels.findIndex((l) => l.name === levelName);
    if (typeof named !== "object" || named === null || Array.isArray(named))
      throw new InvalidArgumentError(`outputs.${levelName}`, "must be an object { <name>: <pattern> }");
    if (levelRank < 0 && Object.keys(named).length === 0)
      throw new InvalidArgumentError(
        `outputs.${levelName}`,
        `unknown level ${quote(levelName)} (${levelList(levels)})`,
      );
    for (const [name, pattern] of Object.entries(named)) {
      const field = `outputs.${levelName}.${name}`;
      if (typeof pattern !== "string")
        throw new InvalidArgumentError(field, `must be a pattern string (got ${typeof pattern})`);
      if (levelRank < 0)
        throw new InvalidArgumentError(
          field,
          `pattern ${quote(pattern)} is at unknown level ${quote(levelName)} (${levelList(levels)})`,
        );
      const nameProblem = problemOf(() => validateName(field, name), field);
      if (nameProblem) throw new InvalidArgumentError(field, `pattern ${quote(pattern)}: output name ${nameProblem}`);
      const problem = patternProblem(pattern, levels[levelRank]!);
      if (problem) throw new InvalidArgumentError(field, `pattern ${quote(pattern)} ${problem}`);
      // Case-insensitive file systems would make "Out/a.csv" and "out/a.csv" one file at two levels.
      const earlier = byFoldedPattern.get(pattern.toLowerCase());
      if (earlier)
        throw new InvalidArgumentError(
          field,
          earlier.pattern === pattern
            ? `pattern ${quote(pattern)} is declared twice (also ${earlier.field}); each pattern may appear once`
            : `pattern ${quote(pattern)} differs only in case from ${quote(earlier.pattern)} (${earlier.field})`,
        );
      byFoldedPattern.set(pattern.toLowerCase(), { field, pattern });
      declared.push({ level: levelName, levelRank, name, pattern });
    }
  }
  return declared.sort((a, b) => a.levelRank - b.levelRank);
}

function levelList(levels: readonly OutputLevel[]): string {
  return `levels: ${levels.map((l) => l.name).join(", ")}`;
}

/** The rule text of the InvalidArgumentError `check` throws for `field`, or undefined when it passes. */
function problemOf(check: () => unknown, field: string): string | undefined {
  try {
    check();
    return undefined;
  } catch (err) {
    if (err instanceof InvalidArgumentError) return err.message.slice(field.length + 2);
    throw err;
  }
}

/**
 * True when a relative POSIX path matches the pattern: components pair up
 * one to one, and `*` matches any run of characters within a component
 * (never a "/"). Without backtracking beyond the last "*", its time is at
 * most the product of each component's lengths, whatever the pattern.
 *
 * @example
 * matchesPattern("output/*.csv", "output/rows.csv")    // true
 * matchesPattern("output/*.csv", "output/a/rows.csv")  // false
 */
export function matchesPattern(pattern: string, path: string): boolean {
  const patternParts = pattern.split("/");
  const pathParts = path.split("/");
  return patternParts.length === pathParts.length && patternParts.every((p, i) => matchesComponent(p, pathParts[i]!));
}

function matchesComponent(pattern: string, name: string): boolean {
  let p = 0;
  let n = 0;
  // Where the last "*" was, and the name position it currently stops at: a mismatch lets it absorb one more character.
  let star = -1;
  let starEnd = 0;
  while (n < name.length) {
    if (pattern[p] === "*") {
      star = p++;
      starEnd = n;
    } else if (p < pattern.length && pattern[p] === name[n]) {
      p++;
      n++;
    } else if (star >= 0) {
      p = star + 1;
      n = ++starEnd;
    } else return false;
  }
  while (pattern[p] === "*") p++;
  return p === pattern.length;
}
