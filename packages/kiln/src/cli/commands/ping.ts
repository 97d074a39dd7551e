import type { KilnClient } from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import { Option, type Command } from "commander";
import { PING_APPLICATION } from "../../apps/ping/ping.js";
import { withClient } from "../client.js";
import { CommandFailed, InterruptedError } from "../exit-codes.js";
import { formatPayload, lastEventText, taskStateName } from "../format.js";
import { byteSize, outputOption, resreqText, UINT32_MAX, wholeNumber, type GlobalOptions } from "../options.js";
import { abortOnSignal } from "../signals.js";
import { DEFAULT_STALL_TIMEOUT_MS, runPing, type PingOptions, type PingSummary } from "../ping-workload.js";
import { createTaskProgress } from "../progress.js";
import { renderFields, renderTable } from "../table.js";

/** How `pingAndReport` shows its results. */
export interface PingDisplay {
  /** `table`: per-task table; `summary`: the summary block; `json`: one JSON object on stdout and nothing else. */
  view: "table" | "summary" | "json";
  /** Draw a live progress bar (only sensible on a terminal). */
  progress: boolean;
}

/**
 * The summary block: Duration, Succeeded x/y, Failed, Cancelled, Throughput, latency p50/p99.
 *
 * @example
 * pingSummaryText(summary) // "Duration:    1.2 s\nSucceeded:   10/10\n..."
 */
export function pingSummaryText(s: PingSummary): string {
  const duration = s.durationMs >= 1000 ? `${(s.durationMs / 1000).toFixed(2)} s` : `${s.durationMs} ms`;
  return renderFields([
    ["Duration", duration],
    ["Succeeded", `${s.succeeded}/${s.tasks}`],
    ["Failed", String(s.failed)],
    ["Cancelled", String(s.cancelled)],
    ["Throughput", `${s.tasksPerSecond.toFixed(2)} tasks/s`],
    ["Latency", `p50 ${s.latencyMs.p50} ms, p99 ${s.latencyMs.p99} ms`],
  ]);
}

/** The per-task table: Task, State, Output (the reason, for a failed task). */
export function pingTaskTable(tasks: readonly flame.Task[]): string {
  return renderTable(
    ["Task", "State", "Output"],
    tasks.map((t) => {
      const state = t.status?.state ?? flame.TaskState.Pending;
      const output =
        state === flame.TaskState.Succeed
          ? formatPayload(t.spec?.output)
          : (lastEventText(t) ?? formatPayload(t.spec?.output));
      return [t.metadata?.id ?? "", taskStateName(state), output.replace(/\s*\n\s*/g, " ")];
    }),
  );
}

/**
 * Runs the ping workload and prints what `kiln ping` prints: the session line, a live
 * progress bar on a terminal, then the per-task table or the summary (or JSON).
 * After printing, throws InterruptedError when `o.signal` stopped it (its unfinished
 * tasks were cancelled), else CommandFailed when any task failed or was cancelled.
 *
 * @example
 * await pingAndReport(client, { tasks: 100 }, { view: "summary", progress: process.stdout.isTTY });
 */
export async function pingAndReport(client: KilnClient, o: PingOptions, display: PingDisplay): Promise<PingSummary> {
  let progress = createTaskProgress(o.tasks, false);
  const { summary, tasks, interrupted } = await runPing(
    client,
    { ...o, collectTasks: display.view === "table" },
    {
      onSessionCreated(id, ms) {
        if (display.view !== "json") process.stdout.write(`Session ${id} was created in ${Math.round(ms)} ms.\n`);
        progress = createTaskProgress(o.tasks, display.progress);
      },
      onTaskDone: (outcome) => progress.tick(outcome),
    },
  ).finally(() => progress.stop());

  if (display.view === "json") process.stdout.write(JSON.stringify(summary) + "\n");
  else if (display.view === "summary") process.stdout.write("\n" + pingSummaryText(summary));
  else
    process.stdout.write(
      pingTaskTable(tasks ?? []) +
        `\n${summary.succeeded}/${summary.tasks} tasks succeeded in ${summary.durationMs} ms.\n`,
    );
  if (interrupted)
    throw new InterruptedError(
      `session ${summary.session} was closed; ${summary.cancelled} unfinished tasks were cancelled`,
    );
  const { failed, cancelled, tasks: total } = summary;
  const unsuccessful = [
    ...(failed > 0 ? [`${failed} of ${total} tasks failed`] : []),
    ...(cancelled > 0
      ? [failed > 0 ? `${cancelled} were cancelled` : `${cancelled} of ${total} tasks were cancelled`]
      : []),
  ];
  if (unsuccessful.length > 0) throw new CommandFailed(unsuccessful.join(" and "));
  return summary;
}

interface PingFlags {
  application: string;
  tasks: number;
  duration?: number;
  memory?: number;
  commonData?: number;
  perf?: boolean;
  priority?: number;
  resreq?: string;
  stallTimeout: number;
  output: "table" | "json";
}

/** Adds `kiln ping`. */
export function registerPing(program: Command): void {
  program
    .command("ping")
    .description("run N small tasks through the cluster and report how it went (like flmping)")
    .option("-a, --application <name>", "application to run", PING_APPLICATION)
    .addOption(new Option("-t, --tasks <n>", "number of tasks").argParser(wholeNumber(1)).default(10))
    .addOption(new Option("-d, --duration <ms>", "each task sleeps this long").argParser(wholeNumber(0)))
    .addOption(new Option("-m, --memory <bytes>", "each task allocates this much (e.g. 1m)").argParser(byteSize))
    .addOption(new Option("-c, --common-data <bytes>", "size of the session's common data").argParser(byteSize))
    .option("-p, --perf", "print the summary only (no per-task table)")
    .addOption(
      new Option("-P, --priority <n>", "session priority (-P as in flmping)").argParser(wholeNumber(0, UINT32_MAX)),
    )
    .addOption(
      new Option("-r, --resreq <resources>", "resources per executor, e.g. cpu=1,mem=1g").argParser(resreqText),
    )
    .addOption(
      new Option("--stall-timeout <s>", "give up when no task finishes for this many seconds")
        .argParser(wholeNumber(1))
        .default(DEFAULT_STALL_TIMEOUT_MS / 1000),
    )
    .addOption(outputOption())
    .addHelpText(
      "after",
      "\nThe summary: Duration (first submission to last completion), Succeeded, Failed, Throughput,\n" +
        "and per-task latency p50/p99 (submission to completion). -o json prints it as one object:\n" +
        '  {"session","tasks","succeeded","failed","cancelled","durationMs","tasksPerSecond","latencyMs":{"p50","p99"}}\n' +
        "Ctrl-C cancels the tasks still pending or running, prints what finished, closes the session (exit 130).\n" +
        "\nExamples:\n  kiln ping\n  kiln ping -p -t 30000\n  kiln ping -t 100 -d 50 -o json\n",
    )
    .action((f: PingFlags, cmd: Command) =>
      withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const options: PingOptions = {
          application: f.application,
          tasks: f.tasks,
          stallTimeoutMs: f.stallTimeout * 1000,
        };
        if (f.duration !== undefined) options.durationMs = f.duration;
        if (f.memory !== undefined) options.memoryBytes = f.memory;
        if (f.commonData !== undefined) options.commonDataBytes = f.commonData;
        if (f.priority !== undefined) options.priority = f.priority;
        if (f.resreq !== undefined) options.resreq = f.resreq;
        const view = f.output === "json" ? "json" : f.perf ? "summary" : "table";
        // On a terminal only: piped output (and -o json above all) stays clean for whatever reads it.
        const progress = view !== "json" && process.stdout.isTTY === true;
        await abortOnSignal((signal) => pingAndReport(client, { ...options, signal }, { view, progress }));
      }),
    );
}
