import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import { startFailureError, type ChildMessage } from "./supervisor-channel.js";

export interface SupervisedProcessOptions {
  /** Used in log lines, e.g. "agent". */
  name: string;
  /** Arguments after `node`, asked for at every start (a restart may reuse what the first start learnt). */
  args: () => string[];
  env: NodeJS.ProcessEnv;
  /** Written to the child's stdin at every start, then stdin is closed: how a secret reaches it outside its environment. */
  stdin?: string;
  /** stdout and stderr are appended here. */
  logFile: string;
  log(line: string): void;
  /** SIGKILL after SIGTERM when it has not exited by then. Default 20 s. */
  stopTimeoutMs?: number;
}

export interface SupervisedProcess {
  pid(): number | undefined;
  /**
   * Resolves when the child first says it serves, with the endpoint it
   * reported; rejects with the child's own reason when it could not start
   * (a PortInUseError for a taken port), or when it keeps exiting.
   */
  readonly ready: Promise<{ endpoint?: string }>;
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
 * keeps exiting (more than 5 times a minute) or said it cannot start (a
 * restart would fail the same way), so a crash of one part of `kiln up` does
 * not take the cluster down. The child gets an IPC channel (see
 * supervisor-channel.ts): it reports readiness on it, and shuts down when
 * the channel closes, so it never outlives this process, even after `kill -9`.
 *
 * @example
 * const agent = superviseProcess({ name: "agent", args: () => [cli, "agent", …], env: process.env, logFile, log });
 * await agent.ready;
 * await agent.stop();
 */
export function superviseProcess(o: SupervisedProcessOptions): SupervisedProcess {
  let child: ChildProcess | undefined;
  let closing = false;
  let startFailure: Error | undefined;
  const restarts: number[] = [];
  let markReady!: (info: { endpoint?: string }) => void;
  let failReady!: (err: Error) => void;
  const ready = new Promise<{ endpoint?: string }>((resolve, reject) => {
    markReady = resolve;
    failReady = reject;
  });
  ready.catch(() => {}); // a caller that stopped waiting must not see an unhandled rejection

  const onMessage = (message: ChildMessage): void => {
    if (message.type === "ready") markReady(message.endpoint ? { endpoint: message.endpoint } : {});
    else if (message.type === "start-failed") {
      startFailure = startFailureError(message);
      failReady(startFailure);
    }
  };

  const start = () => {
    const out = fs.openSync(o.logFile, "a");
    child = spawn(process.execPath, o.args(), {
      stdio: [o.stdin === undefined ? "ignore" : "pipe", out, out, "ipc"],
      env: o.env,
    });
    fs.closeSync(out);
    child.stdin?.on("error", () => undefined); // a child that died before reading it: its exit is handled below
    child.stdin?.end(o.stdin);
    child.on("message", onMessage);
    // "close", not "exit": it comes after the channel is drained, so a start failure it reported is known here.
    child.once("close", (code, signal) => {
      child = undefined;
      if (closing) return;
      if (startFailure) {
        o.log(`${o.name} could not start (${startFailure.message}); not restarting. See ${o.logFile}`);
        return;
      }
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && now - restarts[0]! > RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS_IN_WINDOW) {
        const reason = `${o.name} keeps exiting (last: code ${code}, signal ${signal}); not restarting. See ${o.logFile}`;
        o.log(reason);
        failReady(new Error(reason));
        return;
      }
      o.log(`${o.name} exited (code ${code}, signal ${signal}); restarting. See ${o.logFile}`);
      setTimeout(() => !closing && start(), RESTART_DELAY_MS).unref();
    });
  };
  start();

  return {
    pid: () => child?.pid,
    ready,
    logTail(lines = 15) {
      if (!fs.existsSync(o.logFile)) return "";
      return fs.readFileSync(o.logFile, "utf8").split("\n").slice(-lines).join("\n");
    },
    async stop() {
      closing = true;
      const c = child;
      if (!c) return;
      // Still set, so its "close" (which clears it) is yet to come.
      const exited = new Promise<void>((resolve) => c.once("close", () => resolve()));
      c.kill("SIGTERM");
      const timer = setTimeout(() => c.kill("SIGKILL"), o.stopTimeoutMs ?? 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
