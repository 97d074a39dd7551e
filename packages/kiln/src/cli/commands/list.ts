import { flame } from "@kiln/protocol/proto";
import type { Command } from "commander";
import { withClient } from "../client.js";
import { UsageError } from "../exit-codes.js";
import {
  applicationStateName,
  executorStateName,
  formatClock,
  formatMemory,
  formatResources,
  nodeStateName,
  sessionStateName,
  shimName,
} from "../format.js";
import { messageJson, printJson } from "../json.js";
import { outputOption, type GlobalOptions } from "../options.js";
import { renderTable } from "../table.js";

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

/** `kiln list -s` columns, open sessions first. */
export function sessionTable(sessions: readonly flame.Session[]): string {
  return renderTable(
    ["ID", "State", "App", "Resources", "Priority", "Pending", "Running", "Succeed", "Failed", "Created"],
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
      formatClock(s.status?.creationTime ?? 0n),
    ]),
  );
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
  session?: boolean;
  executor?: boolean;
  node?: boolean;
  output: "table" | "json";
}

async function list(options: ListOptions, globals: GlobalOptions): Promise<void> {
  const chosen = [options.application, options.session, options.executor, options.node].filter(Boolean).length;
  if (chosen !== 1) throw new UsageError("kiln list needs exactly one of -a, -s, -e, -n (see kiln list --help)");
  const json = options.output === "json";
  await withClient(globals, async (client) => {
    if (options.application) {
      const applications = await client.listApplications();
      if (json) printJson(messageJson(flame.ApplicationListSchema, { applications }));
      else process.stdout.write(applicationTable(applications));
    } else if (options.session) {
      const sessions = await client.listSessions();
      if (json) printJson(messageJson(flame.SessionListSchema, { sessions: sortSessions(sessions) }));
      else process.stdout.write(sessionTable(sessions));
    } else if (options.executor) {
      const executors = await client.listExecutors();
      if (json) printJson(messageJson(flame.ExecutorListSchema, { executors }));
      else process.stdout.write(executorTable(executors));
    } else {
      const nodes = await client.listNodes();
      if (json) printJson(messageJson(flame.NodeListSchema, { nodes }));
      else process.stdout.write(nodeTable(nodes));
    }
  });
}

/** Adds `kiln list`. */
export function registerList(program: Command): void {
  program
    .command("list")
    .description("list applications, sessions, executors or nodes")
    .option("-a, --application", "list applications")
    .option("-s, --session", "list sessions (open ones first)")
    .option("-e, --executor", "list executors")
    .option("-n, --node", "list nodes")
    .addOption(outputOption())
    .addHelpText("after", "\nExamples:\n  kiln list -s\n  kiln list -n -o json\n")
    .action((options: ListOptions, cmd: Command) => list(options, cmd.optsWithGlobals<GlobalOptions>()));
}
