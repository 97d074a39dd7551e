import { ErrorCode, KilnError } from "@kiln/protocol";
import type { KilnClient } from "@kiln/sdk";
import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { ApplicationFileError, parseApplicationFile, type ApplicationDocument } from "../app-file.js";
import { withClient } from "../client.js";
import { UsageError } from "../exit-codes.js";
import { eitherSpelling, type GlobalOptions } from "../options.js";

/** Reads and checks every document before the caller touches the cluster; `done` says what did not happen on a problem. */
async function readApplicationFile(file: string, done: string): Promise<ApplicationDocument[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    return parseApplicationFile(text);
  } catch (e) {
    if (e instanceof ApplicationFileError && e.problems.length > 1)
      throw new UsageError(
        `${file} has ${e.problems.length} problems; nothing was ${done}:\n${e.problems.map((p) => `  ${p}`).join("\n")}`,
      );
    if (e instanceof UsageError) throw new UsageError(`${file}: ${e.message}`);
    throw e;
  }
}

const FILE_HELP = `
The file is Flame's application format; several applications may be separated by "---":

  metadata:
    name: echo
  spec:
    shim: Host
    command: /usr/bin/cat
    arguments: ["-u"]
    environments: { LANG: C.UTF-8 }     # or a list of {name, value}
    working_directory: /tmp             # absolute
    max_instances: 4
    delay_release: 60                    # seconds
    labels: [kiln.concurrency=8]
    schema: { input: { type: string } }  # JSON Schema, as YAML or a JSON string

Every document is checked first and every problem is reported (document number and field);
if any is invalid, nothing is changed (exit 2).
`;

type FileCommand = {
  name: "register" | "update";
  description: string;
  done: string;
  apply: (client: KilnClient, app: ApplicationDocument) => Promise<void>;
};

const FILE_COMMANDS: FileCommand[] = [
  {
    name: "register",
    description: "register the applications defined in a YAML file",
    done: "registered",
    apply: (client, app) => client.registerApplication(app.name, app.init),
  },
  {
    name: "update",
    description: "replace the definitions of registered applications from a YAML file",
    done: "updated",
    apply: (client, app) => client.updateApplication(app.name, app.init),
  },
];

/** Adds `kiln register`, `kiln update` and `kiln unregister`. */
export function registerApplicationCommands(program: Command): void {
  for (const spec of FILE_COMMANDS) {
    const command = program.command(spec.name).description(spec.description);
    const fileHelp = "application file (YAML, one or more documents)";
    // flmctl spells it `update -a app.yaml`; register is `-f` in both.
    if (spec.name === "update")
      command
        .option("-f, --file <path>", fileHelp)
        .option("-a, --application <path>", "the same as -f (flmctl's spelling)");
    else command.requiredOption("-f, --file <path>", fileHelp);
    command
      .addHelpText("after", FILE_HELP)
      .action(async (options: { file?: string; application?: string }, cmd: Command) => {
        const file = eitherSpelling(["-f", options.file], ["-a", options.application]);
        const apps = await readApplicationFile(file, spec.done);
        await withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
          for (const app of apps) {
            await spec.apply(client, app);
            process.stdout.write(`Application ${app.name} was ${spec.done}.\n`);
          }
        });
      });
  }

  program
    .command("unregister")
    .description("remove an application; one with open sessions drains: no new sessions, removed when they close")
    .requiredOption("-a, --application <name>", "the application to remove")
    .action((options: { application: string }, cmd: Command) =>
      withClient(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const name = options.application;
        await client.unregisterApplication(name);
        const draining = await client.getApplication(name).then(
          () => true,
          (err: unknown) => {
            if (err instanceof KilnError && err.code === ErrorCode.NotFound) return false;
            throw err;
          },
        );
        process.stdout.write(
          draining
            ? `Application ${name} is being unregistered: it takes no new sessions and is removed when its open sessions close.\n`
            : `Application ${name} was unregistered.\n`,
        );
      }),
    );
}
