import { matchesPattern, type DeclaredOutput } from "@kiln/protocol/jobs";

/**
 * Which new files are which declared outputs: string matching only, no file
 * system, so every executor gets the same answer for the same list.
 */

export interface MatchedOutput {
  path: string;
  /** The most restrictive declared output whose pattern matches the path: the level the file is kept at. */
  output: DeclaredOutput;
  /** The other declared outputs that match it too (less or equally restrictive). */
  alsoMatched: DeclaredOutput[];
}

export interface MatchResult {
  /** Sorted by path. */
  matched: MatchedOutput[];
  /** Declared outputs no file matched: the job fails. */
  unmatchedPatterns: DeclaredOutput[];
  /** New files no pattern matched, sorted; `hint` names the nearest pattern. */
  unmatchedOutputs: { path: string; hint?: string }[];
}

/** Unmatched files that get a hint; each costs an edit distance per pattern, and a long list is read by no one. */
const HINTED_FILES = 100;
/** Characters of a path or pattern compared for a hint (the end, where the file name is). */
const HINT_CHARS = 256;

/**
 * Matches new files to declared outputs. A file matched by several patterns
 * is kept at the most restrictive level (lowest `levelRank`; the first
 * declared among equals), and the others are listed in `alsoMatched`.
 *
 * @example
 * const declared = validateOutputSpec({ highly_sensitive: { rows: "out/*.csv" }, moderately_sensitive: { summary: "out/summary.csv" } });
 * matchOutputs(["out/summary.csv", "notes.txt"], declared);
 * // matched: [{ path: "out/summary.csv", output: rows, alsoMatched: [summary] }],
 * // unmatchedPatterns: [], unmatchedOutputs: [{ path: "notes.txt", hint: 'nearest pattern: "out/*.csv" (highly_sensitive.rows)' }]
 */
export function matchOutputs(files: readonly string[], declared: readonly DeclaredOutput[]): MatchResult {
  const byRank = [...declared].sort((a, b) => a.levelRank - b.levelRank);
  const used = new Set<DeclaredOutput>();
  const matched: MatchedOutput[] = [];
  const unmatchedFiles: string[] = [];
  for (const file of [...new Set(files)].sort()) {
    const hits = byRank.filter((d) => matchesPattern(d.pattern, file));
    for (const hit of hits) used.add(hit);
    if (hits.length === 0) unmatchedFiles.push(file);
    else matched.push({ path: file, output: hits[0]!, alsoMatched: hits.slice(1) });
  }
  const unmatchedPatterns = byRank.filter((d) => !used.has(d));
  const unmatchedOutputs = unmatchedFiles.map((path, i) => {
    const nearest = i < HINTED_FILES ? nearestPattern(path, byRank, used) : undefined;
    return nearest
      ? { path, hint: `nearest pattern: ${JSON.stringify(nearest.pattern)} (${nearest.level}.${nearest.name})` }
      : { path };
  });
  return { matched, unmatchedPatterns, unmatchedOutputs };
}

/** The pattern closest to `path` by edit distance; among equals an unmatched one (likely what was meant), then the first. */
function nearestPattern(
  path: string,
  declared: readonly DeclaredOutput[],
  used: ReadonlySet<DeclaredOutput>,
): DeclaredOutput | undefined {
  let best: { output: DeclaredOutput; score: number } | undefined;
  for (const output of declared) {
    // Doubling the distance leaves room for the tie-break without changing the order of distinct distances.
    const score =
      2 * patternDistance(output.pattern.slice(-HINT_CHARS), path.slice(-HINT_CHARS)) + (used.has(output) ? 1 : 0);
    if (!best || score < best.score) best = { output, score };
  }
  return best?.output;
}

/**
 * Edit distance from a pattern to a path where a `*` may stand for any run of
 * characters other than "/" at no cost: "output/*.csv" is 0 from
 * "output/rows.csv" and 3 from "out/rows.csv".
 */
function patternDistance(pattern: string, path: string): number {
  let previous = Array.from({ length: path.length + 1 }, (_, j) => j);
  for (let i = 1; i <= pattern.length; i++) {
    const p = pattern[i - 1];
    const star = p === "*";
    const current = [previous[0]! + (star ? 0 : 1)];
    for (let j = 1; j <= path.length; j++) {
      const c = path[j - 1];
      const absorbed = star && c !== "/";
      current[j] = Math.min(
        previous[j]! + (star ? 0 : 1), // pattern character unused
        current[j - 1]! + (absorbed ? 0 : 1), // path character extra (or taken by the star)
        previous[j - 1]! + (absorbed || p === c ? 0 : 1), // paired
      );
    }
    previous = current;
  }
  return previous[path.length]!;
}
