import { Command, CommanderError, Option } from "commander";
import { registerApplicationCommands } from "./commands/application.js";
import { registerCacheCommands } from "./commands/cache.js";
import { registerCompletion } from "./commands/completion.js";
import { registerDataCommand } from "./commands/data.js";
import { registerDemo } from "./commands/demo.js";
import { registerDeploy } from "./commands/deploy.js";
import { registerExec } from "./commands/exec.js";
import { registerList } from "./commands/list.js";
import { registerOutputs } from "./commands/outputs.js";
import { registerPing } from "./commands/ping.js";
import { registerRunnerCheck } from "./commands/runner-check.js";
import { registerServerCommands } from "./commands/servers.js";
import { registerSessionCommands } from "./commands/session.js";
import { registerStatus } from "./commands/status.js";
import { registerView } from "./commands/view.js";
import { kilnVersion } from "../util/version.js";
import { ExitCode, reportError } from "./exit-codes.js";
import { tokenOption } from "./secrets.js";

/** The `kiln` command tree. Usage errors surface as CommanderError (see exitOverride). */
export function createProgram(): Command {
  const program = new Command("kiln")
    .description("Kiln: run many short tasks on a cluster of executors (Flame-compatible)")
    .version(kilnVersion())
    .addOption(
      new Option(
        "--endpoint <url>",
        "cluster to talk to (default: the config context, else http://127.0.0.1:7420)",
      ).env("KILN_ENDPOINT"),
    )
    .addOption(
      new Option("--token <token>", "cluster token: sent by clients and agents, required by servers").env("KILN_TOKEN"),
    )
    .option("--token-file <file>", "read the cluster token from the first line of FILE (- for stdin)")
    .option(
      "--cache-endpoint <url>",
      "object cache to use (default: KILN_CACHE_ENDPOINT, the config context's cache, the one the control plane advertises, else http://127.0.0.1:7422)",
    )
    .option("--context <name>", "config context to use (default: the config's current context)")
    .option("--config <path>", "config file (default: ~/.kiln/config.yaml)")
    .option(
      "--tls-ca <file>",
      "CA certificate (PEM) to verify https:// servers with (default: KILN_TLS_CA, the config context's, else the system's)",
    )
    .option(
      "--tls-client-cert <file>",
      "client certificate (PEM) for servers that require one (default: KILN_TLS_CLIENT_CERT)",
    )
    .option("--tls-client-key <file>", "key of --tls-client-cert (default: KILN_TLS_CLIENT_KEY)")
    .configureHelp({ showGlobalOptions: true })
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .hook("preAction", () => {
      // The token read from --token-file is used as --token is; its source marks it as kept out of the environment.
      if (program.getOptionValue("tokenFile") === undefined) return;
      program.setOptionValueWithSource("token", tokenOption(program, "token", "tokenFile", "--token-file"), "config");
    });
  registerServerCommands(program);
  registerCacheCommands(program);
  registerDemo(program);
  registerStatus(program);
  registerList(program);
  registerView(program);
  registerDataCommand(program);
  registerSessionCommands(program);
  registerApplicationCommands(program);
  registerDeploy(program);
  registerPing(program);
  registerRunnerCheck(program);
  registerExec(program);
  registerOutputs(program);
  registerCompletion(program);
  program.addHelpText(
    "after",
    "\nExit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the cluster or cache,\n" +
      "4 upload failed (kiln deploy), 130 interrupted, 124 the job timed out (kiln exec).\n" +
      "Start here: kiln demo (or npm start), then kiln up and kiln ping.\n",
  );
  return program;
}

/**
 * Runs `kiln` with `argv` (as process.argv) and returns the exit code; prints errors itself.
 *
 * @example
 * process.exitCode = await runCli(process.argv);
 */
export async function runCli(argv: readonly string[]): Promise<ExitCode> {
  try {
    await createProgram().parseAsync(argv);
    return ExitCode.Ok;
  } catch (err) {
    // Commander has already printed help, the version or the usage error; exitCode 0 means help/version.
    if (err instanceof CommanderError) return err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    return reportError(err);
  }
}
