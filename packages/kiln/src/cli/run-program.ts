import { spawn } from "node:child_process";
import * as path from "node:path";
import { InterruptedError } from "./exit-codes.js";

export interface RunProgramOptions {
  /** Added to this process's environment. */
  env: Record<string, string>;
  /** SIGTERM after this long, SIGKILL 5 s later. */
  timeoutMs: number;
  signal: AbortSignal;
}

const KILL_GRACE_MS = 5_000;

/**
 * Runs a user program (TypeScript through tsx, or JavaScript) as a child with
 * the terminal attached, and resolves when it exits 0. A non-zero exit, a
 * timeout or an interrupt rejects; the child is always reaped.
 *
 * @example
 * await runProgram("examples/pi/main.ts", { env: { KILN_ENDPOINT: endpoint }, timeoutMs: 600_000, signal });
 */
export function runProgram(program: string, o: RunProgramOptions): Promise<void> {
  const tsx = import.meta.resolve("tsx");
  const child = spawn(process.execPath, ["--import", tsx, path.resolve(program)], {
    stdio: "inherit",
    env: { ...process.env, ...o.env },
  });
  return new Promise<void>((resolve, reject) => {
    let why: Error | undefined;
    const stop = (reason: Error) => {
      why ??= reason;
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), KILL_GRACE_MS).unref();
    };
    const timer = setTimeout(
      () => stop(new Error(`${program} did not finish within ${o.timeoutMs / 1000} s`)),
      o.timeoutMs,
    );
    const onAbort = () => stop(new InterruptedError(`${program} was interrupted`));
    o.signal.addEventListener("abort", onAbort, { once: true });
    child.once("error", (err) => stop(err));
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      o.signal.removeEventListener("abort", onAbort);
      if (why) reject(why);
      else if (code === 0) resolve();
      else reject(new Error(`${program} exited with ${signal ?? `code ${code}`}`));
    });
  });
}
