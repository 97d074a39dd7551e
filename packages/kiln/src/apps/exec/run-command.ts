import { signalProcessGroup } from "../../util/process-group.js";
import { spawn } from "node:child_process";
import { performance } from "node:perf_hooks";
import { BoundedBytes } from "../bounded-bytes.js";

/** One command to run. */
export interface CommandSpec {
  /** The program and its arguments (no shell). */
  argv: readonly string[];
  cwd: string;
  /** The whole environment of the command (nothing is inherited). */
  env: NodeJS.ProcessEnv;
  timeoutMs: number;
  /** Aborting stops the command like a timeout does, but reports `cancelled`. */
  signal: AbortSignal;
  /** Bytes kept of stdout and of stderr, each. */
  captureBytes: number;
}

/** How a command ended. */
export interface CommandOutcome {
  /** null when a signal ended it. 127/126 when it could not be started (not found / not executable), as shells do. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  cancelled: boolean;
  durationMs: number;
  stdout: BoundedBytes;
  stderr: BoundedBytes;
}

/** Time between SIGTERM and SIGKILL when a command is stopped. */
export const KILL_GRACE_MS = 2_000;
// Output still in the pipes when the command exits; a process that escaped its group may hold them open forever.
const PIPE_DRAIN_MS = 500;
/** What a failure message may quote of stderr, even when its middle was cut. */
const TAIL_BYTES = 4096;

const liveGroups = new Set<number>();
let exitHookInstalled = false;

/** Commands must not outlive the service that ran them, however it exits. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const pgid of liveGroups) signalProcessGroup(pgid, "SIGKILL");
  });
}

function startFailure(err: NodeJS.ErrnoException, program: string): { exitCode: number; message: string } {
  const notFound = err.code === "ENOENT";
  return {
    exitCode: notFound ? 127 : 126,
    message: `kiln-exec: cannot run ${JSON.stringify(program)}: ${notFound ? "command not found" : err.message}\n`,
  };
}

/**
 * Runs a command in its own process group with output captured (bounded).
 * On timeout or abort the whole group gets SIGTERM, then SIGKILL after
 * KILL_GRACE_MS; when the command exits by itself, whatever it left running
 * in its group is killed too, so nothing of a job outlives it. Never rejects:
 * a command that cannot start ends with exit code 127 (not found) or 126.
 *
 * @example
 * const done = await runCommand({ argv: ["sh", "-c", "echo hi"], cwd: dir, env: { PATH: process.env.PATH },
 *   timeoutMs: 60_000, signal: AbortSignal.timeout(120_000), captureBytes: 64 * 1024 });
 * console.log(done.exitCode, done.stdout.text()); // 0 "hi\n"
 */
export function runCommand(spec: CommandSpec): Promise<CommandOutcome> {
  installExitHook();
  const started = performance.now();
  // Only stderr's tail is quoted (in a failure message).
  const stdout = new BoundedBytes(spec.captureBytes);
  const stderr = new BoundedBytes(spec.captureBytes, TAIL_BYTES);
  const [program, ...args] = spec.argv;
  return new Promise((resolve) => {
    let timedOut = false;
    let cancelled = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const child = spawn(program!, args, {
      cwd: spec.cwd,
      env: spec.env,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const pgid = child.pid;
    if (pgid !== undefined) liveGroups.add(pgid);
    child.stdout.on("data", (chunk: Buffer) => stdout.add(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.add(chunk));
    const pipesClosed = Promise.all([
      new Promise((r) => child.stdout.once("close", r)),
      new Promise((r) => child.stderr.once("close", r)),
    ]);

    const stop = () => {
      if (pgid === undefined || graceTimer) return;
      signalProcessGroup(pgid, "SIGTERM");
      graceTimer = setTimeout(() => signalProcessGroup(pgid, "SIGKILL"), KILL_GRACE_MS);
    };
    const timeoutTimer = setTimeout(() => {
      timedOut = true;
      stop();
    }, spec.timeoutMs);
    const onAbort = () => {
      cancelled = true;
      stop();
    };
    if (spec.signal.aborted) onAbort();
    else spec.signal.addEventListener("abort", onAbort, { once: true });

    let finished = false;
    const finish = async (exitCode: number | null, signal: NodeJS.Signals | null) => {
      // A failed spawn may report both an error and an exit.
      if (finished) return;
      finished = true;
      clearTimeout(timeoutTimer);
      clearTimeout(graceTimer);
      spec.signal.removeEventListener("abort", onAbort);
      if (pgid !== undefined) {
        signalProcessGroup(pgid, "SIGKILL");
        liveGroups.delete(pgid);
      }
      let drainTimer: NodeJS.Timeout | undefined;
      await Promise.race([pipesClosed, new Promise((r) => (drainTimer = setTimeout(r, PIPE_DRAIN_MS)))]);
      clearTimeout(drainTimer);
      child.stdout.destroy();
      child.stderr.destroy();
      const durationMs = Math.round((performance.now() - started) * 1000) / 1000;
      resolve({ exitCode, signal, timedOut, cancelled, durationMs, stdout, stderr });
    };
    child.once("error", (err: NodeJS.ErrnoException) => {
      // Only a failed spawn leaves no pid; later errors (a failed kill) change nothing.
      if (child.pid !== undefined) return;
      const failure = startFailure(err, program!);
      stderr.add(Buffer.from(failure.message));
      void finish(failure.exitCode, null);
    });
    child.once("exit", (code, signal) => void finish(code, signal));
  });
}
