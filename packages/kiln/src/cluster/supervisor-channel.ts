import { PortInUseError, type PortRole } from "../net/port-in-use.js";

/**
 * The IPC channel between `kiln up` and the cache and agent it supervises
 * (spawned with an "ipc" stdio entry). It carries two things:
 *
 * - readiness: the child says when it is serving (and on which endpoint, for
 *   a port picked by the kernel) or why it could not start, so the parent
 *   neither polls nor restarts a child whose port is taken;
 * - the parent's death: the channel is a socket whose other end only the
 *   parent holds, so the kernel closes it however the parent ends, `kill -9`
 *   included, and the child sees `disconnect` at once. Node has no
 *   PR_SET_PDEATHSIG; polling `process.ppid` would lag and miss a reparenting
 *   to a subreaper; stdin would also end for a child a user started with
 *   `</dev/null`. A process started without the channel (a user's own
 *   `kiln agent`) is not affected at all.
 */
export type ChildMessage =
  | { type: "ready"; endpoint?: string }
  | { type: "start-failed"; message: string; portInUse?: { port: number; role: PortRole } };

/** How long a child whose parent is gone may take to close cleanly before it exits anyway. */
const ORPHAN_EXIT_DEADLINE_MS = 30_000;

/** Whether this process was started by a supervisor with the channel. */
function supervised(): boolean {
  return typeof process.send === "function" && process.connected;
}

/** Tells the supervisor, if any, that this process serves (at `endpoint`). */
export function reportReady(endpoint: string | undefined): void {
  if (supervised()) process.send!({ type: "ready", ...(endpoint ? { endpoint } : {}) } satisfies ChildMessage);
}

/** Tells the supervisor, if any, why this process could not start, so it does not restart it in vain. */
export function reportStartFailure(cause: unknown, message: string): Promise<void> {
  if (!supervised()) return Promise.resolve();
  const report: ChildMessage = {
    type: "start-failed",
    message,
    ...(cause instanceof PortInUseError ? { portInUse: { port: cause.port, role: cause.role } } : {}),
  };
  // Sent before the process exits: wait until it has left.
  return new Promise((resolve) => process.send!(report, undefined, {}, () => resolve()));
}

/**
 * When this process has a supervisor, calls `onParentGone` once the
 * supervisor has gone (the channel closed), and exits after a deadline if the
 * clean shutdown that follows hangs. The channel does not keep the process alive.
 *
 * @example
 * whenParentGone(() => process.kill(process.pid, "SIGTERM"));
 */
export function whenParentGone(onParentGone: () => void): void {
  if (!supervised()) return;
  process.channel?.unref();
  process.once("disconnect", () => {
    setTimeout(() => process.exit(1), ORPHAN_EXIT_DEADLINE_MS).unref();
    onParentGone();
  });
}

/** A supervised child said why it could not start; the message is its own, written for users. */
export class ChildStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChildStartError";
  }
}

/** Turns a child's start-failure report back into the error it stood for (a PortInUseError keeps its port and role). */
export function startFailureError(report: Extract<ChildMessage, { type: "start-failed" }>): Error {
  if (report.portInUse) return new PortInUseError(report.portInUse.port, report.portInUse.role);
  return new ChildStartError(report.message);
}

/** Whether `err` is a supervised child's own report of why it could not start (as opposed to a hang or a crash). */
export function isReportedStartFailure(err: unknown): boolean {
  return err instanceof PortInUseError || err instanceof ChildStartError;
}
