import {
  DEFAULT_JOB_TIMEOUT_MS,
  getJobResult,
  JobFailedError,
  runJob,
  validateJob,
  type JobInputFile,
  type JobOptions,
  type Session,
} from "@kiln/sdk";
import { ErrorCode, InvalidArgumentError, TaskFailedError } from "@kiln/protocol";
import { JOB_APPLICATION, type JobResult, type OutputSpec } from "@kiln/protocol/jobs";
import type { Command } from "commander";
import * as fs from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { withCache } from "../cache-client.js";
import { withClient } from "../client.js";
import { CommandFailed, ExitCode, InterruptedError, UsageError } from "../exit-codes.js";
import { jobStatusLine, outputReportText, printJobLogs } from "../job-report.js";
import { wholeNumber, type GlobalOptions } from "../options.js";
import { abortOnSignal } from "../signals.js";

interface ExecFlags {
  output: string[];
  input: string[];
  env: string[];
  timeout: number;
  app: string;
  json: boolean;
}

/** How long a cancelled job's executor gets to save its logs before `kiln exec` stops waiting for them. */
const CANCELLED_LOG_WAIT_MS = 10_000;

const collect = (value: string, previous: string[]) => [...previous, value];

/** `level:name=pattern` (repeatable) → `{ level: { name: pattern } }`. */
export function parseOutputFlags(flags: readonly string[]): OutputSpec {
  const outputs: OutputSpec = {};
  for (const flag of flags) {
    const m = /^([^:=]+):([^=]+)=(.+)$/.exec(flag);
    if (!m)
      throw new UsageError(
        `--output ${JSON.stringify(flag)} must be level:name=pattern, e.g. moderately_sensitive:summary=out/summary.txt`,
      );
    const [, level, name, pattern] = m as unknown as [string, string, string, string];
    const named = (outputs[level] ??= {});
    if (named[name] !== undefined) throw new UsageError(`--output: ${level}:${name} is declared twice`);
    named[name] = pattern;
  }
  return outputs;
}

/** `local[=path]`: a local file, placed at `path` (default: see JobOptions.inputs). */
function parseInputFlag(flag: string): string | JobInputFile {
  const eq = flag.indexOf("=");
  return eq < 0 ? flag : { file: flag.slice(0, eq), path: flag.slice(eq + 1) };
}

function parseEnvFlags(flags: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const flag of flags) {
    const eq = flag.indexOf("=");
    if (eq <= 0) throw new UsageError(`--env ${JSON.stringify(flag)} must be NAME=VALUE`);
    env[flag.slice(0, eq)] = flag.slice(eq + 1);
  }
  return env;
}

/** The job the flags describe, checked with the executor's rules before anything is created. */
function jobFromFlags(command: string[], f: ExecFlags): JobOptions {
  const job: JobOptions = {
    command,
    inputs: f.input.map(parseInputFlag),
    env: parseEnvFlags(f.env),
    timeoutMs: f.timeout * 1000,
    outputs: parseOutputFlags(f.output),
  };
  try {
    validateJob(job);
  } catch (err) {
    throw err instanceof InvalidArgumentError ? new UsageError(`${err.message} (${err.code})`) : err;
  }
  for (const input of job.inputs ?? []) {
    const file = typeof input === "string" ? input : input.file!;
    if (!fs.statSync(file, { throwIfNoEntry: false })?.isFile())
      throw new UsageError(`--input ${JSON.stringify(file)}: no such file (or not a regular file)`);
  }
  return job;
}

/** The logs a cancelled job's executor keeps; it saves them once the command is dead, so wait a little. */
async function cancelledLogs(
  session: Session,
  taskId: string,
  cache: JobOptions["cache"],
): Promise<JobResult | undefined> {
  const deadline = Date.now() + CANCELLED_LOG_WAIT_MS;
  for (;;) {
    const { result } = await getJobResult(session, taskId, cache ? { cache } : {});
    if (result || Date.now() > deadline) return result;
    await sleep(200);
  }
}

function show(json: boolean, session: string, task: string | undefined, result: JobResult, extra = {}): void {
  if (json) {
    process.stdout.write(`${JSON.stringify({ session, task, ...extra, result }, null, 2)}\n`);
    return;
  }
  printJobLogs(result);
  process.stderr.write(`\nJob ${session}/${task ?? "?"}: ${jobStatusLine(result)}\n`);
  process.stderr.write(outputReportText(result.report, result.report.outputs));
  if (result.report.manifest && result.report.outputs.length > 0)
    process.stderr.write(`Fetch them with: kiln outputs ${session} ${task} --to <dir>\n`);
}

/** Adds `kiln exec`: one command as a job in a new session, its logs and output report, its status as ours. */
export function registerExec(program: Command): void {
  program
    .command("exec")
    .description("run a command as a job on the cluster and collect the output files it declares")
    .argument("<command...>", "the program and its arguments (after --)")
    .option(
      "--output <level:name=pattern>",
      "declare an output file pattern at a privacy level (repeatable)",
      collect,
      [],
    )
    .option("--input <file[=path]>", "place a local file in the job's working directory (repeatable)", collect, [])
    .option("--env <NAME=VALUE>", "set a variable for the command (repeatable)", collect, [])
    .option(
      "--timeout <s>",
      "kill the command's process group after this many seconds",
      wholeNumber(1),
      DEFAULT_JOB_TIMEOUT_MS / 1000,
    )
    .option("--app <name>", "the application that runs jobs", JOB_APPLICATION)
    .option("--json", "print {session, task, result} as JSON instead of the logs and report", false)
    .addHelpText(
      "after",
      "\nThe command runs without a shell in a fresh working directory on an executor. Files it creates that\n" +
        "match a declared pattern are kept in the object cache; list or fetch them with kiln outputs.\n" +
        "Levels, most restrictive first: highly_sensitive (any file type, 1 GiB), moderately_sensitive and\n" +
        "minimally_sensitive (.csv .jpg .jpeg .png .svg .svgz .html .txt .log .json .md, 16 MiB). Patterns are\n" +
        "relative paths whose only wildcard is * within one directory level, ending in a concrete extension.\n" +
        "--input data/in.csv keeps its relative path; an absolute path or one outside the current directory\n" +
        "lands under its base name; file=path names the place.\n" +
        "The job's stdout and stderr go to ours; the report goes to stderr.\n" +
        "\nExit codes: 0 the job succeeded; 1 it failed (non-zero exit, a pattern no file matched, a declared\n" +
        "output refused) or could not run; 2 usage error (a bad pattern, a missing input file); 3 cannot reach\n" +
        "the cluster or cache; 124 it timed out; 130 interrupted (the job was cancelled, nothing was kept).\n" +
        "\nExamples:\n" +
        "  kiln exec -- sh -c 'echo hello'\n" +
        "  kiln exec --input data.csv --output moderately_sensitive:count=out/count.txt \\\n" +
        "      -- sh -c 'mkdir -p out && wc -l < data.csv > out/count.txt'\n" +
        "  kiln exec --timeout 60 --output highly_sensitive:rows='out/*.csv' -- python3 extract.py\n",
    )
    .action((command: string[], f: ExecFlags, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const job = jobFromFlags(command, f);
      return withClient(globals, (client) =>
        withCache(globals, async (cache) => {
          const session = await client.createSession({ application: f.app });
          let taskId: string | undefined;
          try {
            const result = await abortOnSignal((signal) =>
              runJob(session, { ...job, cache, signal, onTaskId: (id) => (taskId = id) }),
            );
            show(f.json, session.id, taskId, result);
          } catch (err) {
            if (err instanceof JobFailedError) {
              show(f.json, session.id, err.taskId, err.result);
              if (err.result.timedOut) throw new CommandFailed(err.message, ExitCode.TimedOut);
              throw new CommandFailed(err.message);
            }
            if (err instanceof TaskFailedError && err.code === ErrorCode.TaskCancelled) {
              const logs = await cancelledLogs(session, err.taskId, cache);
              if (logs) show(f.json, session.id, err.taskId, logs, { cancelled: true });
              throw new InterruptedError(
                `job ${session.id}/${err.taskId} was cancelled: its command was killed, nothing was kept`,
              );
            }
            if (err instanceof InvalidArgumentError) throw new UsageError(`${err.message} (${err.code})`);
            throw err;
          } finally {
            await session.close().catch(() => undefined);
          }
        }),
      );
    });
}
