import type { JobResult, PersistedOutput } from "@kiln/protocol/jobs";
import { renderTable } from "./table.js";

const SHA_SHOWN = 12;

/** `exit code 0 in 1.2 s`, `timed out after 60 s (killed by SIGTERM)`, `killed by SIGKILL after 3 s`. */
export function jobStatusLine(result: JobResult): string {
  const seconds = `${(result.durationMs / 1000).toFixed(result.durationMs < 10_000 ? 2 : 0)} s`;
  if (result.timedOut) return `timed out after ${seconds} (its process group was killed)`;
  if (result.exitCode === null) return `killed by ${result.signal ?? "a signal"} after ${seconds}`;
  return `exit code ${result.exitCode} in ${seconds}`;
}

/** Writes the job's own stdout and stderr to ours, with a note where they were cut. */
export function printJobLogs(result: JobResult): void {
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  for (const [name, cut] of [
    ["stdout", result.stdoutTruncated],
    ["stderr", result.stderrTruncated],
  ] as const)
    if (cut > 0) process.stderr.write(`[kiln: ${cut} more bytes of the job's ${name} were not kept]\n`);
}

function outputRow(o: PersistedOutput): string[] {
  const also = o.alsoMatched.map((a) => `${a.level}.${a.name}`).join(", ");
  return [o.path, o.level, o.name, String(o.size), o.sha256.slice(0, SHA_SHOWN), also];
}

/**
 * The output report for people: the files kept (path, level, declared
 * name, size, sha256 prefix, other patterns that matched), whether the set
 * is complete (manifest written), then what went wrong: patterns no file
 * matched, new files no pattern matched (with the nearest pattern), and
 * entries refused.
 *
 * @example
 * process.stderr.write(outputReportText(result.report, result.report.outputs));
 */
export function outputReportText(report: JobResult["report"], shown: readonly PersistedOutput[]): string {
  const lines: string[] = [];
  if (shown.length === 0) lines.push("Outputs: none");
  else {
    lines.push(`Outputs (${shown.length}):`);
    const table = renderTable(["Path", "Level", "Name", "Bytes", "sha256", "Also matched"], shown.map(outputRow));
    lines.push(
      ...table
        .trimEnd()
        .split("\n")
        .map((l) => `  ${l}`),
    );
  }
  lines.push(
    report.manifest
      ? `Complete: yes (manifest ${report.manifest.key}, version ${report.manifest.version})`
      : "Complete: no (no manifest was written: nothing can be fetched)",
  );
  if (report.unmatchedPatterns.length > 0) {
    lines.push("Patterns no file matched (the job fails):");
    for (const p of report.unmatchedPatterns) lines.push(`  ${p.pattern}  (${p.level}.${p.name})`);
  }
  if (report.unmatchedOutputs.length > 0) {
    lines.push("New files no pattern matched (not kept):");
    for (const u of report.unmatchedOutputs) lines.push(`  ${u.path}${u.hint ? `  (${u.hint})` : ""}`);
    if (report.unmatchedOutputsOmitted) lines.push(`  … and ${report.unmatchedOutputsOmitted} more`);
  }
  if (report.refused.length > 0) {
    lines.push("Refused (not kept):");
    for (const r of report.refused) lines.push(`  ${r.path}: ${r.reason}`);
    if (report.refusedOmitted) lines.push(`  … and ${report.refusedOmitted} more`);
  }
  return `${lines.join("\n")}\n`;
}
