import * as fs from "node:fs";
import { Option, type Command } from "commander";
import { UsageError } from "./exit-codes.js";

/**
 * A token read from `file` (`-`: stdin), its first line. `--token-file`
 * keeps a token out of the process's environment and command line, which
 * any process of the same user can read (/proc/PID/environ, /proc/PID/cmdline).
 *
 * @example
 * readTokenFile("-", "--token-file") // the line piped in: kiln agent --token-file - < token
 */
export function readTokenFile(file: string, flag: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file === "-" ? 0 : file, "utf8");
  } catch (err) {
    throw new UsageError(`${flag}: cannot read ${file === "-" ? "stdin" : file}: ${(err as Error).message}`);
  }
  const token = text.split(/\r?\n/, 1)[0]!.trim();
  if (token === "") throw new UsageError(`${flag}: ${file === "-" ? "stdin" : file} holds no token (first line empty)`);
  return token;
}

/**
 * The token of `option` (e.g. "token", "nodeToken") from its flag, its env
 * variable or its `--…-file` (`fileOption`), which may not be combined.
 */
export function tokenOption(cmd: Command, option: string, fileOption: string, flags: string): string | undefined {
  const owner = optionOwner(cmd, option);
  const value = owner.getOptionValue(option) as string | undefined;
  const file = optionOwner(cmd, fileOption).getOptionValue(fileOption) as string | undefined;
  if (file === undefined) return value || undefined;
  if (value) throw new UsageError(`${flags}: give the token or the file it is in, not both`);
  return readTokenFile(file, flags.split(" ").pop()!);
}

/**
 * Where a service process started below this one could read a token this
 * process was given: its environment or command line. A warning, not a
 * refusal: the setup it warns about is the one earlier versions documented.
 */
export function warnIfTokenExposed(cmd: Command, options: Record<string, string>): void {
  for (const [option, name] of Object.entries(options)) {
    const source = optionOwner(cmd, option).getOptionValueSource(option);
    if (source !== "env" && source !== "cli") continue;
    const where = source === "env" ? "environment" : "command line";
    process.stderr.write(
      `warning: ${name} is in this process's ${where}, which every process of this user can read ` +
        `(/proc/${process.pid}/${source === "env" ? "environ" : "cmdline"}), service processes included; ` +
        `pass it with ${name === "the cluster token" ? "--token-file" : "--node-token-file"} FILE (or - for stdin) ` +
        `instead (see docs/security.md)\n`,
    );
  }
}

/** The command (this one or an ancestor) that declares `option`. */
function optionOwner(cmd: Command, option: string): Command {
  for (let c: Command | null = cmd; c; c = c.parent) if (c.options.some((o) => o.attributeName() === option)) return c;
  return cmd;
}

/** `--node-token`, for the servers that admit agents and for the agent; see also {@link nodeTokenFileOption}. */
export const nodeTokenOption = (role: string): Option =>
  new Option("--node-token <token>", `node token: ${role}`).env("KILN_NODE_TOKEN");
export const nodeTokenFileOption = (): Option =>
  new Option("--node-token-file <file>", "read the node token from the first line of FILE (- for stdin)");
/** The node token from --node-token, KILN_NODE_TOKEN or --node-token-file. */
export const nodeTokenOf = (cmd: Command): string | undefined =>
  tokenOption(cmd, "nodeToken", "nodeTokenFile", "--node-token-file");
