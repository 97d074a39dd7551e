import type { SessionOptions } from "@kiln/sdk";
import { Option, type Command } from "commander";
import { withClient } from "../client.js";
import { printJson } from "../json.js";
import { eitherSpelling, outputOption, resreqText, UINT32_MAX, wholeNumber, type GlobalOptions } from "../options.js";

interface CreateOptions {
  application?: string;
  /** flmctl's spelling of --application. */
  app?: string;
  priority?: number;
  resreq?: string;
  min?: number;
  max?: number;
  id?: string;
}

function sessionOptions(o: CreateOptions): SessionOptions {
  const options: SessionOptions = { application: eitherSpelling(["-a", o.application], ["--app", o.app]) };
  if (o.id !== undefined) options.id = o.id;
  if (o.priority !== undefined) options.priority = o.priority;
  if (o.resreq !== undefined) options.resreq = o.resreq;
  if (o.min !== undefined) options.minInstances = o.min;
  if (o.max !== undefined) options.maxInstances = o.max;
  return options;
}

interface CancelOptions {
  session: string;
  task?: string[];
  output: "table" | "json";
}

/** Adds `kiln create`, `kiln cancel`, `kiln close` and `kiln delete`. */
export function registerSessionCommands(program: Command): void {
  program
    .command("create")
    .description("create an open session of an application")
    .option("-a, --application <name>", "the application the session runs")
    .option("--app <name>", "the same as -a (flmctl's spelling)")
    .addOption(new Option("-p, --priority <n>", "higher runs first").argParser(wholeNumber(0, UINT32_MAX)))
    .addOption(
      new Option("-r, --resreq <resources>", "resources per executor, e.g. cpu=1,mem=2g").argParser(resreqText),
    )
    .addOption(new Option("--min <n>", "executors to keep bound").argParser(wholeNumber(0, UINT32_MAX)))
    .addOption(
      new Option("--max <n>", "most executors at once (default unlimited)").argParser(wholeNumber(1, UINT32_MAX)),
    )
    .option("--id <id>", "the session id (default: generated from the application name)")
    .addHelpText("after", "\nExample:\n  kiln create -a kiln-ping -p 10 -r cpu=1,mem=512m --max 4\n")
    .action((options: CreateOptions, cmd: Command) =>
      withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const session = await client.createSession(sessionOptions(options));
        process.stdout.write(`Session ${session.id} was created.\n`);
      }),
    );

  program
    .command("cancel")
    .description("cancel a session's pending and running tasks (all of them, or those given with -t)")
    .requiredOption("-s, --session <id>", "the session whose tasks to cancel")
    .option("-t, --task <ids...>", "only these tasks (default: every unfinished task)")
    .addOption(outputOption())
    .addHelpText(
      "after",
      "\nRunning tasks are stopped in their service (it is told to cancel them) and end Cancelled;\n" +
        "tasks that had already finished are left as they are and not counted. The session stays open.\n" +
        '-o json prints {"session": ID, "cancelled": N}.\n' +
        "\nExamples:\n  kiln cancel -s kiln-ping-3kq9x2\n  kiln cancel -s kiln-ping-3kq9x2 -t 4 5\n",
    )
    .action((options: CancelOptions, cmd: Command) =>
      withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const cancelled = await client.session(options.session).cancel(options.task ?? []);
        if (options.output === "json") printJson({ session: options.session, cancelled });
        else
          process.stdout.write(
            `Cancelled ${cancelled} ${cancelled === 1 ? "task" : "tasks"} in session ${options.session}.\n`,
          );
      }),
    );

  program
    .command("close")
    .description("close a session: no new tasks; its pending tasks are cancelled")
    .requiredOption("-s, --session <id>", "the session to close")
    .action((options: { session: string }, cmd: Command) =>
      withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        await client.closeSession(options.session);
        process.stdout.write(`Session ${options.session} was closed.\n`);
      }),
    );

  program
    .command("delete")
    .description("delete a session and its tasks")
    .requiredOption("-s, --session <id>", "the session to delete")
    .action((options: { session: string }, cmd: Command) =>
      withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        await client.deleteSession(options.session);
        process.stdout.write(`Session ${options.session} was deleted.\n`);
      }),
    );
}
