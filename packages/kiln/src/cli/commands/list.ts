import { formatMemory } from "@kiln/protocol";
import type { KilnClient } from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import { Option, type Command } from "commander";
import { withClient } from "../client.js";
import { UsageError } from "../exit-codes.js";
import {
  applicationStateName,
  executorStateName,
  formatClock,
  formatResources,
  nodeStateName,
  sessionStateName,
  shimName,
} from "../format.js";
import { jsonLine, messageJson, printJson } from "../json.js";
import { outputOption, wholeNumber, type GlobalOptions } from "../options.js";
import { parseStates, SESSION_STATES, TASK_STATES } from "../state-filter.js";
import { renderTable } from "../table.js";
import {
  filterTaskRows,
  listTaskRows,
  taskRowsJson,
  taskTable,
  updateRow,
  type TaskFilter,
  type TaskRow,
} from "../task-list.js";
import { runWatch } from "../watch-display.js";

/** `kiln list -a` columns, as flmctl prints them. */
export function applicationTable(apps: readonly flame.Application[]): string {
  return renderTable(
    ["Name", "State", "Shim", "Tags", "Created", "Command"],
    apps.map((a) => [
      a.metadata?.name ?? "",
      applicationStateName(a.status?.state ?? flame.ApplicationState.Enabled),
      shimName(a.spec?.shim ?? flame.Shim.Host),
      (a.spec?.labels ?? []).join(","),
      formatClock(a.status?.creationTime ?? 0n),
      a.spec?.command ?? "",
    ]),
  );
}

/** Open sessions first, then oldest first within each state. */
export function sortSessions(sessions: readonly flame.Session[]): flame.Session[] {
  return [...sessions].sort(
    (a, b) =>
      (a.status?.state ?? 0) - (b.status?.state ?? 0) ||
      Number((a.status?.creationTime ?? 0n) - (b.status?.creationTime ?? 0n)),
  );
}

/** `kiln list -s` columns, open sessions first; Pending + Running + Succeed + Failed + Cancelled = every task. */
export function sessionTable(sessions: readonly flame.Session[]): string {
  return renderTable(
    ["ID", "State", "App", "Resources", "Priority", "Pending", "Running", "Succeed", "Failed", "Cancelled", "Created"],
    sortSessions(sessions).map((s) => [
      s.metadata?.id ?? "",
      sessionStateName(s.status?.state ?? flame.SessionState.Open),
      s.spec?.application ?? "",
      formatResources(s.spec?.resreq),
      String(s.spec?.priority ?? 0),
      String(s.status?.pending ?? 0),
      String(s.status?.running ?? 0),
      String(s.status?.succeed ?? 0),
      String(s.status?.failed ?? 0),
      String(s.status?.cancelled ?? 0),
      formatClock(s.status?.creationTime ?? 0n),
    ]),
  );
}

/** What `kiln list -s` keeps: sessions in these states, of this application, the first `limit` of them. */
export interface SessionFilter {
  states?: ReadonlySet<flame.SessionState>;
  app?: string;
  limit?: number;
}

/** The sessions `filter` keeps, in `kiln list -s` order. */
export function filterSessions(sessions: Iterable<flame.Session>, filter: SessionFilter): flame.Session[] {
  const kept = sortSessions([...sessions]).filter(
    (s) =>
      (!filter.states || filter.states.has(s.status?.state ?? flame.SessionState.Open)) &&
      (filter.app === undefined || s.spec?.application === filter.app),
  );
  return filter.limit === undefined ? kept : kept.slice(0, filter.limit);
}

/** `kiln list -e` columns. */
export function executorTable(executors: readonly flame.Executor[]): string {
  return renderTable(
    ["ID", "State", "Session", "Node"],
    executors.map((e) => [
      e.metadata?.id ?? "",
      executorStateName(e.status?.state ?? flame.ExecutorState.ExecutorUnknown),
      e.status?.sessionId ?? "",
      e.spec?.node ?? "",
    ]),
  );
}

/** `kiln list -n` columns; CPU and Memory are the node's capacity. */
export function nodeTable(nodes: readonly flame.Node[]): string {
  return renderTable(
    ["Name", "Hostname", "Status", "CPU", "Memory", "Arch", "OS"],
    nodes.map((n) => [
      n.metadata?.name ?? "",
      n.spec?.hostname ?? "",
      nodeStateName(n.status?.state ?? flame.NodeState.Unknown),
      String(n.status?.capacity?.cpu ?? 0n),
      formatMemory(n.status?.capacity?.memory ?? 0n),
      n.status?.info?.arch ?? "",
      n.status?.info?.os ?? "",
    ]),
  );
}

interface ListOptions {
  application?: boolean;
  /** `-s` alone lists sessions; `-s ID` with `-t` picks the session whose tasks to list. */
  session?: boolean | string;
  task?: boolean;
  executor?: boolean;
  node?: boolean;
  state?: string;
  app?: string;
  limit?: number;
  watch?: boolean;
  output: "table" | "json";
}

/** Checks the flags' combination before anything is sent; returns what to list. */
function listKind(o: ListOptions): "applications" | "sessions" | "tasks" | "executors" | "nodes" {
  const sessionId = typeof o.session === "string" ? o.session : undefined;
  const kinds = [o.application, o.session !== undefined && !o.task, o.task, o.executor, o.node];
  if (kinds.filter(Boolean).length !== 1)
    throw new UsageError("kiln list needs exactly one of -a, -s, -t, -e, -n (see kiln list --help)");
  if (sessionId !== undefined && !o.task)
    throw new UsageError(
      "-s takes a session id only with -t (kiln list -t -s ID); to show one session: kiln view -s ID",
    );
  if (o.task && o.session === true) throw new UsageError("with -t, -s needs the session's id: kiln list -t -s ID");
  const filtering = o.state !== undefined || o.app !== undefined || o.limit !== undefined;
  if ((filtering || o.watch) && !o.task && o.session === undefined)
    throw new UsageError("--state, --app, --limit and -w go with -s (sessions) or -t (tasks)");
  if (o.task && sessionId !== undefined && o.app !== undefined)
    throw new UsageError("--app picks the sessions whose tasks -t lists; with -s ID there is nothing to pick");
  if (o.task && o.watch && sessionId === undefined)
    throw new UsageError("kiln list -t -w watches one session: kiln list -t -s ID -w");
  if (o.application) return "applications";
  if (o.executor) return "executors";
  if (o.node) return "nodes";
  return o.task ? "tasks" : "sessions";
}

async function listSessions(client: KilnClient, filter: SessionFilter, o: ListOptions): Promise<void> {
  const json = o.output === "json";
  const asJson = (sessions: flame.Session[]) => messageJson(flame.SessionListSchema, { sessions });
  if (!o.watch) {
    const sessions = filterSessions(await client.listSessions(), filter);
    if (json) printJson(asJson(sessions));
    else process.stdout.write(sessionTable(sessions));
    return;
  }
  // The sessions feed sends every session first, then the ones each commit changed.
  await runWatch(json, async (display, signal) => {
    const known = new Map<string, flame.Session>();
    for await (const change of client.watchSessions({ signal })) {
      for (const id of change.deleted) known.delete(id);
      for (const s of change.sessions) known.set(s.metadata?.id ?? "", s);
      display.show(() => {
        const sessions = filterSessions(known.values(), filter);
        return json ? jsonLine(asJson(sessions)) : sessionTable(sessions) + "\n";
      });
    }
  });
}

/** The tasks of one session (`sessionId`), or of every session of `app` (every session when absent). */
async function listTasks(
  client: KilnClient,
  of: { sessionId?: string; app?: string },
  filter: TaskFilter,
  o: ListOptions,
): Promise<void> {
  const json = o.output === "json";
  const acrossSessions = of.sessionId === undefined;
  if (!o.watch) {
    const ids =
      of.sessionId !== undefined
        ? [of.sessionId]
        : filterSessions(await client.listSessions(), of.app !== undefined ? { app: of.app } : {}).map(
            (s) => s.metadata?.id ?? "",
          );
    const rows = await listTaskRows(client, ids, filter);
    if (json) printJson(taskRowsJson(rows));
    else process.stdout.write(taskTable(rows, acrossSessions));
    return;
  }
  await runWatch(json, async (display, signal) => {
    // The snapshot comes in id order and later tasks have higher ids, so insertion order is id order.
    const rows = new Map<string, TaskRow>();
    for await (const updates of client.session(of.sessionId!).watch({ snapshot: true, omitOutput: true, signal })) {
      for (const u of updates) rows.set(u.taskId, updateRow(u));
      display.show(() => {
        const kept = filterTaskRows(rows.values(), filter);
        return json ? jsonLine(taskRowsJson(kept)) : taskTable(kept, false) + "\n";
      });
    }
  });
}

async function list(options: ListOptions, globals: GlobalOptions): Promise<void> {
  const kind = listKind(options);
  // Parsed before connecting: a bad --state is a usage error that touches nothing.
  const sessionFilter: SessionFilter = {};
  const taskFilter: TaskFilter = {};
  if (options.state !== undefined && kind === "sessions")
    sessionFilter.states = parseStates(options.state, SESSION_STATES, "session");
  if (options.state !== undefined && kind === "tasks")
    taskFilter.states = parseStates(options.state, TASK_STATES, "task");
  if (options.app !== undefined) sessionFilter.app = options.app;
  if (options.limit !== undefined) sessionFilter.limit = taskFilter.limit = options.limit;
  const json = options.output === "json";
  await withClient(globals, async (client) => {
    if (kind === "applications") {
      const applications = await client.listApplications();
      if (json) printJson(messageJson(flame.ApplicationListSchema, { applications }));
      else process.stdout.write(applicationTable(applications));
    } else if (kind === "executors") {
      const executors = await client.listExecutors();
      if (json) printJson(messageJson(flame.ExecutorListSchema, { executors }));
      else process.stdout.write(executorTable(executors));
    } else if (kind === "nodes") {
      const nodes = await client.listNodes();
      if (json) printJson(messageJson(flame.NodeListSchema, { nodes }));
      else process.stdout.write(nodeTable(nodes));
    } else if (kind === "sessions") {
      await listSessions(client, sessionFilter, options);
    } else {
      const of = typeof options.session === "string" ? { sessionId: options.session } : { app: options.app };
      await listTasks(client, of, taskFilter, options);
    }
  });
}

/** Adds `kiln list`. */
export function registerList(program: Command): void {
  program
    .command("list")
    .description("list applications, sessions, tasks, executors or nodes")
    .option("-a, --application", "list applications")
    .option("-s, --session [id]", "list sessions (open ones first); with -t and an id: that session's tasks")
    .option("-t, --task", "list tasks: of the session given with -s ID, else of every session (--app: of its sessions)")
    .option("-e, --executor", "list executors")
    .option("-n, --node", "list nodes")
    .option("--state <states>", "with -s or -t: only these states, comma-separated (see below)")
    .option("--app <name>", "with -s or -t: only sessions of this application")
    .addOption(new Option("--limit <n>", "with -s or -t: at most this many rows").argParser(wholeNumber(1)))
    .option("-w, --watch", "with -s or -t -s ID: print the list again at each change, until Ctrl-C")
    .addOption(outputOption())
    .addHelpText(
      "after",
      "\n--state takes Flame's names: open, closed (sessions); pending, running, succeed, failed, cancelled (tasks).\n" +
        "-w redraws the list on a terminal and prints each new state after the last one otherwise (with -o json:\n" +
        "one line per state); Ctrl-C ends it (exit 0).\n" +
        "\nExamples:\n  kiln list -s\n  kiln list -s --state open -w\n  kiln list -t -s kiln-ping-3kq9x2 --state failed,cancelled\n" +
        "  kiln list -t --app kiln-ping --state running --limit 20\n  kiln list -n -o json\n",
    )
    .action((options: ListOptions, cmd: Command) => list(options, cmd.optsWithGlobals<GlobalOptions>()));
}
