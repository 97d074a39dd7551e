import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { signalProcessGroup } from "../util/process-group.js";
import { prependPath } from "../util/search-path.js";

const LOG_TAIL_LINES = 20;
const LOG_TAIL_BYTES = 16 * 1024;

/** The npm next to the agent's node, else the one on PATH. */
export function npmCommand(): string {
  const bundled = path.join(path.dirname(process.execPath), "npm");
  return fs.existsSync(bundled) ? bundled : "npm";
}

/** Runs a command with its output appended to `logFile`; "ok" or what went wrong. */
export async function runLogged(
  command: string,
  args: string[],
  cwd: string,
  logFile: string,
  o: { installTimeoutMs: number; signal: AbortSignal },
): Promise<string> {
  const fd = fs.openSync(logFile, "a");
  let child: ChildProcess;
  try {
    fs.writeSync(fd, `\n# ${new Date().toISOString()} ${command} ${args.join(" ")} (in ${cwd})\n`);
    // npm's `#!/usr/bin/env node` should find the agent's own node first.
    const env = { ...process.env, PATH: prependPath([path.dirname(process.execPath)], process.env.PATH) };
    child = spawn(command, args, { cwd, env, detached: true, stdio: ["ignore", fd, fd] });
  } finally {
    fs.closeSync(fd);
  }
  const killGroup = () => signalProcessGroup(child.pid!, "SIGKILL");
  let stopped = "";
  const stop = (why: string) => {
    stopped = why;
    killGroup();
  };
  const timer = setTimeout(() => stop(`timed out after ${o.installTimeoutMs} ms`), o.installTimeoutMs);
  const onAbort = () => stop("was stopped: the bind was abandoned");
  o.signal.addEventListener("abort", onAbort, { once: true });
  try {
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      child.once("error", (err) => reject(new Error(`cannot run ${command}: ${err.message}`)));
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
    killGroup();
    if (stopped) return stopped;
    if (exit.code === 0) return "ok";
    return `failed with exit code ${exit.code ?? "none"} (signal ${exit.signal ?? "none"})`;
  } finally {
    clearTimeout(timer);
    o.signal.removeEventListener("abort", onAbort);
  }
}

/** The last lines of a log, for an error message. */
export async function tail(file: string): Promise<string> {
  const text = await fs.promises.readFile(file, "utf8").catch(() => "");
  return text.slice(-LOG_TAIL_BYTES).trimEnd().split("\n").slice(-LOG_TAIL_LINES).join("\n");
}
