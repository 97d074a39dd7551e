import {
  DEFAULT_MAX_DEPTH,
  getData,
  GetDataError,
  type ObjectCache,
  type RunnerData,
  type ServiceData,
} from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import { inspect } from "node:util";
import type { Command } from "commander";
import { withCache } from "../cache-client.js";
import { withClient } from "../client.js";
import { UsageError } from "../exit-codes.js";
import { lastEventText, taskStateName } from "../format.js";
import { outputOption, wholeNumber, type GlobalOptions } from "../options.js";

interface DataFlags {
  output: string;
  limit: number;
  depth: number;
}

/** What one task's data decodes to; a part that does not decode is its error message, not a failed command. */
interface TaskData {
  task: string;
  state: string;
  input?: RunnerData | { error: string };
  output?: RunnerData | { error: string };
  message?: string;
}

const SUMMARY_WIDTH = 100;

/** Adds `kiln data <session> [<task>]`: a Runner session's or task's stored data as readable values. */
export function registerDataCommand(program: Command): void {
  program
    .command("data")
    .description("show a Runner task's input and output (or a session's service and tasks) as readable values")
    .argument("<session>", "session id")
    .argument("[task]", "task id; without it, the session's service and a line per task")
    .option("--limit <n>", "tasks listed without a task id", wholeNumber(1), 50)
    .option("--depth <n>", "levels of object refs fetched from the cache", wholeNumber(0, 16), DEFAULT_MAX_DEPTH)
    .addOption(outputOption())
    .addHelpText(
      "after",
      "\nValues are decoded with Kiln's codec (which never runs code) and object refs are fetched only from the\n" +
        "configured cache (--cache-endpoint). Captured stdout/stderr of each call is shown with its output.\n" +
        "\nExamples:\n  kiln data pi-7xk2q9 1\n  kiln data pi-7xk2q9 --limit 10\n  kiln data pi-7xk2q9 1 -o json\n",
    )
    .action((sessionId: string, taskId: string | undefined, f: DataFlags, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      return withClient(globals, (client) =>
        withCache(globals, async (cache) => {
          const session = client.session(sessionId);
          const read = (bytes: Uint8Array | undefined) => decode(bytes, cache, f.depth);
          const service = await runnerService(await session.info(), cache, f.depth);
          if (taskId !== undefined) {
            const task = await session.getTask(taskId);
            const data: TaskData = {
              task: taskId,
              state: taskStateName(task.status?.state ?? flame.TaskState.Pending),
              ...(await readParts(task, read)),
            };
            if (f.output === "json") process.stdout.write(`${JSON.stringify(data, jsonValue, 2)}\n`);
            else process.stdout.write(taskView(sessionId, data));
            return;
          }
          const tasks: TaskData[] = [];
          let more = 0;
          for await (const task of session.listTasks()) {
            if (tasks.length >= f.limit) {
              more++;
              continue;
            }
            const id = task.metadata?.id ?? "?";
            tasks.push({
              task: id,
              state: taskStateName(task.status?.state ?? flame.TaskState.Pending),
              ...(await readParts(task, read)),
            });
          }
          if (f.output === "json") {
            process.stdout.write(`${JSON.stringify({ session: sessionId, service, tasks, more }, jsonValue, 2)}\n`);
            return;
          }
          process.stdout.write(`Session ${sessionId}\n`);
          process.stdout.write(`Service ${serviceLine(service)}\n`);
          for (const t of tasks) process.stdout.write(`${taskLine(t)}\n`);
          if (more > 0) process.stdout.write(`… ${more} more (kiln data ${sessionId} <task>, or --limit)\n`);
        }),
      );
    });
}

async function readParts(
  task: flame.Task,
  read: (bytes: Uint8Array | undefined) => Promise<TaskData["input"]>,
): Promise<Pick<TaskData, "input" | "output" | "message">> {
  const [input, output] = await Promise.all([read(task.spec?.input), read(task.spec?.output)]);
  // Why a task failed is its last event (the Flame schema has no message field).
  const state = task.status?.state;
  const failed = state === flame.TaskState.Failed || state === flame.TaskState.Cancelled;
  const message = failed ? lastEventText(task) : undefined;
  return { ...(input ? { input } : {}), ...(output ? { output } : {}), ...(message ? { message } : {}) };
}

/**
 * The Runner service a session runs (its common data), or what went wrong fetching what it refers to.
 * A session whose common data is no Runner service is not a Runner session: a usage error that says
 * so and what to use instead.
 */
async function runnerService(
  session: flame.Session,
  cache: ObjectCache,
  maxDepth: number,
): Promise<ServiceData | { error: string }> {
  const id = session.metadata?.id ?? "?";
  const notRunner = (why: string) =>
    new UsageError(
      `session ${id} (application ${session.spec?.application ?? "?"}) is not a Runner session: ${why}. ` +
        `kiln data shows the calls of Runner sessions; see this one's tasks with kiln view -s ${id}`,
    );
  const bytes = session.spec?.commonData;
  if (!bytes || bytes.byteLength === 0)
    throw notRunner("it has no common data, where a Runner session names its service");
  let data: RunnerData;
  try {
    data = await getData(bytes, { cache, maxDepth });
  } catch (err) {
    // A Runner service whose constructor arguments cannot be fetched is still a Runner service.
    if (err instanceof GetDataError && err.kind === "cache") return { error: err.message };
    if (err instanceof GetDataError) throw notRunner(`its common data is not a Runner service (${err.message})`);
    throw err;
  }
  if (data.type !== "service") throw notRunner(`its common data is a Runner ${data.type} record, not a service`);
  return data;
}

/** A part's data, or what is wrong with it: one bad task must not hide the others. */
async function decode(
  bytes: Uint8Array | undefined,
  cache: ObjectCache,
  maxDepth: number,
): Promise<RunnerData | { error: string } | undefined> {
  if (!bytes || bytes.byteLength === 0) return undefined;
  try {
    return await getData(bytes, { cache, maxDepth });
  } catch (err) {
    if (err instanceof GetDataError) return { error: err.message };
    throw err;
  }
}

const show = (v: unknown, width = Infinity) =>
  inspect(v, { depth: 6, breakLength: width, maxArrayLength: 20, maxStringLength: 200 });

function oneLine(v: unknown): string {
  const text = show(v).replace(/\s*\n\s*/g, " ");
  return text.length > SUMMARY_WIDTH ? `${text.slice(0, SUMMARY_WIDTH - 1)}…` : text;
}

function serviceLine(d: ServiceData | { error: string }): string {
  if (!("type" in d)) return `(${d.error})`;
  const options = [
    d.kind,
    d.stateful ? "stateful" : "",
    d.dependencies.length ? `deps ${d.dependencies.join(" ")}` : "",
  ];
  const ctor = d.kind === "class" || d.args.length > 0 ? `(${d.args.map(oneLine).join(", ")})` : "";
  return `${d.module}#${d.export}${ctor} [${options.filter(Boolean).join(", ")}]`;
}

function callText(d: TaskData["input"]): string {
  if (!d) return "-";
  if ("error" in d && !("type" in d)) return `(${d.error})`;
  if (d.type !== "input") return `(input is a Runner ${d.type} record)`;
  return `${d.method ?? d.service.split("#").pop()}(${d.args.map(oneLine).join(", ")})`;
}

function resultText(d: TaskData["output"]): string {
  if (!d) return "-";
  if ("error" in d && !("type" in d)) return `(${d.error})`;
  if (d.type !== "output") return `(output is a Runner ${d.type} record)`;
  return d.error ? `throws ${d.error.name}: ${d.error.message}` : oneLine(d.result);
}

function taskLine(t: TaskData): string {
  return `  ${t.task.padStart(4)}  ${t.state.padEnd(9)} ${callText(t.input)} → ${resultText(t.output)}`;
}

function indent(text: string): string {
  return text.replace(/^/gm, "    ");
}

function taskView(sessionId: string, t: TaskData): string {
  const lines = [`Task ${sessionId}/${t.task} (${t.state})`];
  const input = t.input;
  if (input && "type" in input && input.type === "input") {
    lines.push(`Service  ${input.service}`, `Method   ${input.method ?? "-"}`, "Input:");
    input.args.forEach((a, i) => lines.push(`  args[${i}] =`, indent(show(a, 96))));
  } else lines.push(`Input    ${callText(input)}`);
  const output = t.output;
  if (output && "type" in output && output.type === "output") {
    const m = output.metadata;
    lines.push("Output:");
    if (output.error)
      lines.push("  error =", indent(output.error.stack ?? `${output.error.name}: ${output.error.message}`));
    else lines.push(`  result${m.stored ? " (stored in the cache)" : ""} =`, indent(show(output.result, 96)));
    lines.push(`  ran ${m.durationMs.toFixed(2)} ms on ${m.host} (pid ${m.pid})`);
    for (const [name, text, cut] of [
      ["stdout", m.stdout, m.stdoutTruncated],
      ["stderr", m.stderr, m.stderrTruncated],
    ] as const) {
      if (!text && !cut) continue;
      lines.push(`  ${name}:`, indent(text.replace(/\n$/, "")));
      if (cut) lines.push(`    … ${cut} more bytes not kept`);
    }
  } else lines.push(`Output   ${resultText(output)}`);
  if (t.message) lines.push(`Message  ${t.message}`);
  return `${lines.join("\n")}\n`;
}

/** JSON.stringify replacer for codec values JSON has no type for (Dates and ObjectRefs have toJSON already). */
function jsonValue(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === "bigint") return `${value}n`;
  if (value instanceof Map) return { $map: [...value] };
  if (value instanceof Set) return { $set: [...value] };
  if (value instanceof Error) return { $error: { name: value.name, message: value.message, stack: value.stack } };
  if (ArrayBuffer.isView(value))
    return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);
  return value;
}
