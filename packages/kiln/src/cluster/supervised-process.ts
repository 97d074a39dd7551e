import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";

export interface SupervisedProcessOptions {
  /** Used in log lines, e.g. "agent". */
  name: string;
  /** Arguments after `node`, asked for at every start (a restart may reuse what the first start learnt). */
  args: () => string[];
  env: NodeJS.ProcessEnv;
  /** stdout and stderr are appended here. */
  logFile: string;
  log(line: string): void;
  /** SIGKILL after SIGTERM when it has not exited by then. Default 20 s. */
  stopTimeoutMs?: number;
}

export interface SupervisedProcess {
  pid(): number | undefined;
  /** The last lines of its log, for error messages. */
  logTail(lines?: number): string;
  /** Stops it (SIGTERM, then SIGKILL) and stops restarting it; resolves once it is reaped. */
  stop(): Promise<void>;
}

const RESTART_WINDOW_MS = 60_000;
const MAX_RESTARTS_IN_WINDOW = 5;
const RESTART_DELAY_MS = 500;

/**
 * Runs `node ...args` as a child and restarts it when it exits, unless it
 * keeps exiting (more than 5 times a minute), so a crash of one part of
 * `kiln up` does not take the cluster down.
 *
 * @example
 * const agent = superviseProcess({ name: "agent", args: () => [cli, "agent", …], env: process.env, logFile, log });
 * await agent.stop();
 */
export function superviseProcess(o: SupervisedProcessOptions): SupervisedProcess {
  let child: ChildProcess | undefined;
  let closing = false;
  const restarts: number[] = [];
  const start = () => {
    const out = fs.openSync(o.logFile, "a");
    child = spawn(process.execPath, o.args(), { stdio: ["ignore", out, out], env: o.env });
    fs.closeSync(out);
    child.once("exit", (code, signal) => {
      child = undefined;
      if (closing) return;
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && now - restarts[0]! > RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS_IN_WINDOW) {
        o.log(`${o.name} keeps exiting (last: code ${code}, signal ${signal}); not restarting. See ${o.logFile}`);
        return;
      }
      o.log(`${o.name} exited (code ${code}, signal ${signal}); restarting. See ${o.logFile}`);
      setTimeout(() => !closing && start(), RESTART_DELAY_MS).unref();
    });
  };
  start();

  return {
    pid: () => child?.pid,
    logTail(lines = 15) {
      if (!fs.existsSync(o.logFile)) return "";
      return fs.readFileSync(o.logFile, "utf8").split("\n").slice(-lines).join("\n");
    },
    async stop() {
      closing = true;
      const c = child;
      if (!c) return;
      const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
      c.kill("SIGTERM");
      const timer = setTimeout(() => c.kill("SIGKILL"), o.stopTimeoutMs ?? 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
