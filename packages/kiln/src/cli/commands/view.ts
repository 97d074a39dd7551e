import { toJson } from "@bufbuild/protobuf";
import type { KilnClient } from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import type { Command } from "commander";
import { withClient } from "../client.js";
import { CommandFailed, UsageError } from "../exit-codes.js";
import {
  applicationStateName,
  formatCapacity,
  formatDateTime,
  formatEvent,
  formatPayload,
  formatResources,
  nodeStateName,
  sessionStateName,
  shimName,
  taskStateName,
} from "../format.js";
import { jsonLine, printJson } from "../json.js";
import { outputOption, type GlobalOptions } from "../options.js";
import { renderFields } from "../table.js";
import { runWatch } from "../watch-display.js";

const orDash = (text: string | undefined): string => (text === undefined || text === "" ? "-" : text);

/** Events one per line under a heading, or `Events: -`. */
function eventsBlock(events: readonly flame.Event[]): string {
  if (events.length === 0) return "Events:  -\n";
  return "Events:\n" + events.map((e) => `  ${formatEvent(e)}\n`).join("");
}

/** The application detail view (`kiln view -a NAME`). */
export function applicationView(app: flame.Application): string {
  const spec = app.spec;
  const env = (spec?.environments ?? []).map((e) => `${e.name}=${e.value}`);
  return renderFields([
    ["Name", app.metadata?.name ?? ""],
    ["State", applicationStateName(app.status?.state ?? flame.ApplicationState.Enabled)],
    ["Created", formatDateTime(app.status?.creationTime ?? 0n)],
    ["Description", orDash(spec?.description)],
    ["Shim", shimName(spec?.shim ?? flame.Shim.Host)],
    ["Image", orDash(spec?.image)],
    ["URL", orDash(spec?.url)],
    ["Installer", orDash(spec?.installer)],
    ["Labels", orDash(spec?.labels.join(", "))],
    ["Command", orDash(spec?.command)],
    ["Arguments", orDash(spec?.arguments.join(" "))],
    ["Environments", orDash(env.join(", "))],
    ["WorkingDir", orDash(spec?.workingDirectory)],
    ["Max Instances", spec?.maxInstances === undefined ? "unlimited" : String(spec.maxInstances)],
    ["Delay Release", spec?.delayRelease === undefined ? "-" : `${spec.delayRelease}s`],
    ["Schema input", orDash(spec?.schema?.input)],
    ["Schema output", orDash(spec?.schema?.output)],
    ["Schema common-data", orDash(spec?.schema?.commonData)],
  ]);
}

/** The session detail view (`kiln view -s ID`): fields, the task counters line, then events. */
export function sessionView(s: flame.Session): string {
  const st = s.status;
  const counters = [
    `${st?.pending ?? 0} pending`,
    `${st?.running ?? 0} running`,
    `${st?.succeed ?? 0} succeed`,
    `${st?.failed ?? 0} failed`,
    ...(st?.cancelled ? [`${st.cancelled} cancelled`] : []),
  ];
  return (
    renderFields([
      ["Session", s.metadata?.id ?? ""],
      ["Application", s.spec?.application ?? ""],
      ["State", sessionStateName(st?.state ?? flame.SessionState.Open)],
      ["Resources", formatResources(s.spec?.resreq)],
      ["Priority", String(s.spec?.priority ?? 0)],
      [
        "Instances",
        `min ${s.spec?.minInstances ?? 0}, max ${s.spec?.maxInstances === undefined ? "unlimited" : s.spec.maxInstances}`,
      ],
      ["Creation Time", formatDateTime(st?.creationTime ?? 0n)],
      ...(st?.completionTime === undefined ? [] : ([["Completion Time", formatDateTime(st.completionTime)]] as const)),
    ]) +
    `Tasks: ${counters.join(", ")}\n` +
    eventsBlock(st?.events ?? [])
  );
}

/** The task detail view (`kiln view -s ID -t TASK`): state, events, then input and output as text or a byte count. */
export function taskView(task: flame.Task, application: string): string {
  const st = task.status;
  return (
    renderFields([
      ["Task", task.metadata?.id ?? ""],
      ["Session", task.spec?.sessionId ?? ""],
      ["Application", application],
      ["State", taskStateName(st?.state ?? flame.TaskState.Pending)],
      ["Creation Time", formatDateTime(st?.creationTime ?? 0n)],
      ...(st?.completionTime === undefined ? [] : ([["Completion Time", formatDateTime(st.completionTime)]] as const)),
      ["Input", orDash(formatPayload(task.spec?.input))],
      ["Output", orDash(formatPayload(task.spec?.output))],
    ]) + eventsBlock(st?.events ?? [])
  );
}

/** The node detail view (`kiln view -n NAME`). */
export function nodeView(n: flame.Node): string {
  const st = n.status;
  const heartbeat = st?.lastHeartbeatTime ? formatDateTime(st.lastHeartbeatTime * 1000n) : "-";
  return renderFields([
    ["Name", n.metadata?.name ?? ""],
    ["Hostname", n.spec?.hostname ?? ""],
    ["Status", nodeStateName(st?.state ?? flame.NodeState.Unknown)],
    ["Capacity", st?.capacity ? formatCapacity(st.capacity) : "-"],
    ["Allocatable", st?.allocatable ? formatCapacity(st.allocatable) : "-"],
    ["Arch", st?.info?.arch ?? ""],
    ["OS", st?.info?.os ?? ""],
    ["Addresses", orDash((st?.addresses ?? []).map((a) => `${a.type}=${a.address}`).join(", "))],
    ["Last Heartbeat", heartbeat],
  ]);
}

interface ViewOptions {
  application?: string;
  session?: string;
  task?: string;
  node?: string;
  watch?: boolean;
  output: "table" | "json";
}

/** A session is done changing once it is closed and none of its tasks still runs. */
function finished(s: flame.Session): boolean {
  return s.status?.state === flame.SessionState.Closed && !s.status.pending && !s.status.running;
}

/** `kiln view -s ID -w`: the session view again at each change, from the sessions feed, until it is done. */
function watchSession(client: KilnClient, sessionId: string, json: boolean): Promise<void> {
  return runWatch(json, async (display, signal) => {
    // The feed sends each event once; the view shows them all.
    let events: flame.Event[] = [];
    for await (const change of client.watchSessions({ sessionIds: [sessionId], events: true, signal })) {
      if (change.deleted.includes(sessionId)) throw new CommandFailed(`session ${sessionId} was deleted`);
      const session = change.sessions.find((s) => s.metadata?.id === sessionId);
      if (!session?.status) continue;
      events = [...events, ...session.status.events];
      session.status.events = events;
      display.show(() =>
        json ? jsonLine({ session: toJson(flame.SessionSchema, session) }) : sessionView(session) + "\n",
      );
      if (finished(session)) return;
    }
  });
}

/** `kiln view -s ID -t TASK -w`: the task view again at each state change, until it has finished. */
async function watchTask(client: KilnClient, sessionId: string, taskId: string, json: boolean): Promise<void> {
  const application = (await client.getSession(sessionId)).spec?.application ?? "";
  await runWatch(json, async (display, signal) => {
    for await (const task of client.session(sessionId).watchTask(taskId, { signal }))
      display.show(() => (json ? jsonLine(toJson(flame.TaskSchema, task)) : taskView(task, application) + "\n"));
  });
}

async function view(options: ViewOptions, globals: GlobalOptions): Promise<void> {
  if (options.task !== undefined && options.session === undefined)
    throw new UsageError("-t TASK needs the session too: kiln view -s SESSION -t TASK");
  const chosen = [options.application, options.session, options.node].filter((v) => v !== undefined).length;
  if (chosen !== 1)
    throw new UsageError("kiln view needs exactly one of -a NAME, -s ID, -n NAME (see kiln view --help)");
  if (options.watch && options.session === undefined)
    throw new UsageError("-w watches a session or a task: kiln view -s ID -w, kiln view -s ID -t TASK -w");
  const json = options.output === "json";
  await withClient(globals, async (client) => {
    if (options.watch && options.task !== undefined) await watchTask(client, options.session!, options.task, json);
    else if (options.watch) await watchSession(client, options.session!, json);
    else if (options.application !== undefined) {
      const app = await client.getApplication(options.application);
      if (json) printJson(toJson(flame.ApplicationSchema$, app));
      else process.stdout.write(applicationView(app));
    } else if (options.node !== undefined) {
      const node = await client.getNode(options.node);
      if (json) printJson(toJson(flame.NodeSchema, node));
      else process.stdout.write(nodeView(node));
    } else if (options.task !== undefined) {
      const sessionId = options.session!;
      const [session, task] = await Promise.all([
        client.getSession(sessionId),
        client.session(sessionId).getTask(options.task),
      ]);
      if (json) printJson(toJson(flame.TaskSchema, task));
      else process.stdout.write(taskView(task, session.spec?.application ?? ""));
    } else {
      const sessionId = options.session!;
      const session = await client.getSession(sessionId);
      if (!json) {
        process.stdout.write(sessionView(session));
        return;
      }
      const tasks = [];
      for await (const task of client.session(sessionId).listTasks()) tasks.push(toJson(flame.TaskSchema, task));
      printJson({ session: toJson(flame.SessionSchema, session), tasks });
    }
  });
}

/** Adds `kiln view`. */
export function registerView(program: Command): void {
  program
    .command("view")
    .description("show one application, session, task or node in detail")
    .option("-a, --application <name>", "the application to show")
    .option("-s, --session <id>", "the session to show")
    .option("-t, --task <id>", "with -s: the task of that session to show")
    .option("-n, --node <name>", "the node to show")
    .option("-w, --watch", "with -s: show it again at each change, until it is done (or Ctrl-C)")
    .addOption(outputOption())
    .addHelpText(
      "after",
      "\nExamples:\n  kiln view -a kiln-ping\n  kiln view -s kiln-ping-3kq9x2\n  kiln view -s kiln-ping-3kq9x2 -t 1\n" +
        "  kiln view -s kiln-ping-3kq9x2 -o json   # adds every task\n" +
        "  kiln view -s kiln-ping-3kq9x2 -w        # until the session is closed and its tasks are done\n" +
        "\n-w redraws on a terminal and prints each new state after the last one otherwise (-o json: one line per\n" +
        "state, the session without its task list). It ends, exit 0, when a session is closed with no task left\n" +
        "running, when a task has finished, or at Ctrl-C.\n",
    )
    .action((options: ViewOptions, cmd: Command) => view(options, cmd.optsWithGlobals<GlobalOptions>()));
}
