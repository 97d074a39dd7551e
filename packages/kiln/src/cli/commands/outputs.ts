import { fetchOutputs, getJobResult, outputsForLevel } from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import type { Command } from "commander";
import * as path from "node:path";
import { withCache } from "../cache-client.js";
import { withClient } from "../client.js";
import { CommandFailed } from "../exit-codes.js";
import { taskStateName } from "../format.js";
import { jobStatusLine, outputReportText } from "../job-report.js";
import type { GlobalOptions } from "../options.js";

interface OutputsFlags {
  level?: string;
  to?: string;
  json: boolean;
}

/** Adds `kiln outputs <session> <task>`: a job's output report, and its files fetched with --to. */
export function registerOutputs(program: Command): void {
  program
    .command("outputs")
    .description("list a job's output files, or fetch them with --to")
    .argument("<session>", "session id")
    .argument("<task>", "task id")
    .option("--level <level>", "only files at this level or a less restrictive one")
    .option("--to <dir>", "download the files into this directory, each at <dir>/<path>")
    .option("--json", "print the report as JSON", false)
    .addHelpText(
      "after",
      "\nFiles are fetched only when the job's outputs are complete (their manifest was written), and each is\n" +
        "checked against its sha256. A level includes the less restrictive ones: --level moderately_sensitive\n" +
        "gives moderately_ and minimally_sensitive files. A cancelled job shows its logs and has no outputs.\n" +
        "\nExamples:\n  kiln outputs kiln-exec-Ab12Cd 1\n  kiln outputs kiln-exec-Ab12Cd 1 --level moderately_sensitive --to ./results\n",
    )
    .action((sessionId: string, taskId: string, f: OutputsFlags, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      return withClient(globals, (client) =>
        withCache(globals, async (cache) => {
          const { state, result, spec, message } = await getJobResult(client.session(sessionId), taskId, { cache });
          if (!result)
            throw new CommandFailed(
              `task ${sessionId}/${taskId} (${taskStateName(state)}) has no job result${message ? `: ${message}` : ""}`,
            );
          const levels = spec?.levels;
          const shown = outputsForLevel(result.report.outputs, f.level, levels);
          const options = { cache, ...(f.level ? { level: f.level } : {}), ...(levels ? { levels } : {}) };
          const fetched = f.to ? await fetchOutputs(result.report, f.to, options) : [];
          if (f.json) {
            const report = { ...result.report, outputs: shown };
            process.stdout.write(
              `${JSON.stringify({ session: sessionId, task: taskId, state: taskStateName(state), report }, null, 2)}\n`,
            );
            return;
          }
          const cancelled = state === flame.TaskState.Cancelled ? " (cancelled: nothing was kept)" : "";
          process.stdout.write(
            `Job ${sessionId}/${taskId}: ${taskStateName(state)}, ${jobStatusLine(result)}${cancelled}\n`,
          );
          if (message) process.stdout.write(`Message: ${message}\n`);
          process.stdout.write(outputReportText(result.report, shown));
          if (f.to) process.stdout.write(`Fetched ${fetched.length} files into ${path.resolve(f.to)}\n`);
        }),
      );
    });
}
