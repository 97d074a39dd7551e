import { Option, type Command } from "commander";
import { withCache } from "../cache-client.js";
import { withClient } from "../client.js";
import { CommandFailed, ExitCode, isTokenRefused, isUnreachable, UsageError } from "../exit-codes.js";
import { printJson } from "../json.js";
import { eitherSpelling, wholeNumber, type GlobalOptions } from "../options.js";
import { renderFields } from "../table.js";

interface DeployFlags {
  name: string;
  /** flmctl's spelling of the <path> argument. */
  application?: string;
  command?: string;
  argument?: string[];
  installer?: "node" | "binary";
  env?: string[];
  label?: string[];
  exclude?: string[];
  description?: string;
  workingDirectory?: string;
  maxInstances?: number;
  delayRelease?: number;
  dryRun?: boolean;
  output: "summary" | "json";
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

function environments(pairs: string[] | undefined): Record<string, string> | undefined {
  if (!pairs) return undefined;
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(`--env ${pair}: expected NAME=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** Adds `kiln deploy`. */
export function registerDeploy(program: Command): void {
  program
    .command("deploy")
    .description("package a directory, archive or executable, upload it to the object cache and register it")
    .argument("[path]", "a Node project or other directory, a .tar.gz/.tgz/.zip archive, or an executable")
    .requiredOption("--name <app>", "application name")
    .option("--application <path>", "the same as <path> (flmctl deploy's spelling)")
    .option("--command <command>", "what to run (default: detected; see below)")
    .option("--argument <arg>", "an argument of the command (repeat for more)", collect)
    .addOption(new Option("--installer <kind>", "how the agent installs the package").choices(["node", "binary"]))
    .option("--env <NAME=VALUE>", "an environment variable of the service (repeat for more)", collect)
    .option("--label <label>", "a label, e.g. kiln.concurrency=8 (repeat for more)", collect)
    .option("--exclude <pattern>", "gitignore-style pattern left out of a directory (repeat for more)", collect)
    .option("--description <text>", "application description")
    .option("--working-directory <dir>", "absolute working directory on the node (default: the installed package)")
    .addOption(new Option("--max-instances <n>", "most executors at once").argParser(wholeNumber(1)))
    .addOption(new Option("--delay-release <s>", "seconds an idle executor stays bound").argParser(wholeNumber(0)))
    .option("--dry-run", "detect and package, print what would happen, upload and register nothing")
    .addOption(new Option("-o, --output <format>", "output format").choices(["summary", "json"]).default("summary"))
    .addHelpText(
      "after",
      `
Detection (when --command is not given):
  a directory with package.json   node "\${KILN_APP_DIR}/<bin>" (package.json "bin"), else sh -c "<scripts.start>";
                                  installer node (dependencies installed on the node from the lockfile,
                                  which must exist if there are any; nodes provide the @kiln/* packages)
  another directory               its only executable (in bin/ or at the top); installer binary
  an executable file              that file; installer binary
  an archive                      needs --command
Directories are packed without .git, node_modules, .gitignore'd files and --exclude patterns.
The package goes to the cache as <app>/pkg/<app>-<sha256 prefix>.tar.gz (not again if unchanged);
the application installs it from cache://<key>#sha256=<digest>, so nodes verify it and a redeploy
always runs the new code.

Exit codes: 0 deployed, 1 the control plane refused it (or a server refused the token), 2 detection
or packaging failed (bad path or flags, dependencies without a lockfile), 3 the control plane or cache
cannot be reached, 4 the cache was reached but the upload failed.

Examples:
  kiln deploy ./my-service --name my-service
  kiln deploy ./build/server --name server --label kiln.concurrency=8
  kiln deploy ./app.tar.gz --name app --command node --argument '\${KILN_APP_DIR}/main.js' --dry-run
`,
    )
    .action(async (pathArgument: string | undefined, f: DeployFlags, cmd: Command) => {
      const target = eitherSpelling(["<path>", pathArgument], ["--application", f.application]);
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const { deploy, UploadError } = await import("../../deploy/deploy.js");
      const { DetectionError } = await import("../../deploy/detect.js");
      const options = {
        name: f.name,
        ...(f.command !== undefined ? { command: f.command } : {}),
        ...(f.argument !== undefined ? { arguments: f.argument } : {}),
        ...(f.installer !== undefined ? { installer: f.installer } : {}),
        ...(f.exclude !== undefined ? { excludes: f.exclude } : {}),
        ...(f.label !== undefined ? { labels: f.label } : {}),
        ...(f.description !== undefined ? { description: f.description } : {}),
        ...(f.workingDirectory !== undefined ? { workingDirectory: f.workingDirectory } : {}),
        ...(f.maxInstances !== undefined ? { maxInstances: f.maxInstances } : {}),
        ...(f.delayRelease !== undefined ? { delayReleaseSeconds: f.delayRelease } : {}),
        environments: environments(f.env),
        dryRun: f.dryRun === true,
      };
      // Mapped inside withCache, so that a cache that cannot be reached or refuses the token is reported
      // as such (exit 3, or the token error) and any other failed upload as one (exit 4).
      const result = await withClient(globals, (client) =>
        withCache(globals, (cache) =>
          deploy(target, options, { client, cache }).catch((err: unknown) => {
            if (err instanceof DetectionError) throw new UsageError(err.message);
            if (err instanceof UploadError && (isUnreachable(err.cause) || isTokenRefused(err.cause))) throw err.cause;
            if (err instanceof UploadError) throw new CommandFailed(err.message, ExitCode.UploadFailed);
            throw err;
          }),
        ),
      );
      if (f.output === "json") {
        printJson({ ...result });
        return;
      }
      process.stdout.write(
        renderFields([
          ["Application", `${result.name} (${result.application})`],
          ["Package", `${result.kind}, ${result.size} bytes, sha256 ${result.sha256}`],
          ["Uploaded", result.uploaded ? `yes, to ${result.key}` : `no (${f.dryRun ? "dry run" : "already there"})`],
          ["URL", result.url],
          ["Installer", result.installer],
          ["Command", [result.command, ...result.arguments].join(" ")],
          ["Detected", result.reason],
        ]),
      );
    });
}
