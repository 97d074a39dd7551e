import { formatMemory, formatResreq, eventMessage } from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";

const pad = (n: number, width = 2): string => String(n).padStart(width, "0");

/** Unix milliseconds → local `HH:MM:SS` (the Created columns). */
export function formatClock(ms: bigint | number): string {
  const d = new Date(Number(ms));
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Unix milliseconds → local `YYYY-MM-DD HH:MM:SS` (detail views). */
export function formatDateTime(ms: bigint | number): string {
  const d = new Date(Number(ms));
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${formatClock(ms)}`;
}

/**
 * An event's message; for an event without one (from a Flame server or an older Kiln), what its code means.
 *
 * @example
 * eventText({ code: 1 }) // "running"
 */
export function eventText(e: Pick<flame.Event, "code" | "message">): string {
  return eventMessage(e.code, e.message);
}

/** Why a task is in its state: the message of its last event (undefined when it has no events). */
export function lastEventText(task: flame.Task): string | undefined {
  const last = task.status?.events.at(-1);
  return last && eventText(last);
}

/**
 * One event line as Flame prints it: `HH:MM:SS.mmm: message (code)`.
 *
 * @example
 * formatEvent({ code: 2, message: "completed on vm", creationTime: 0n }) // "00:00:00.000: completed on vm (2)" in UTC
 */
export function formatEvent(e: Pick<flame.Event, "code" | "message" | "creationTime">): string {
  const d = new Date(Number(e.creationTime));
  return `${formatClock(e.creationTime)}.${pad(d.getMilliseconds(), 3)}: ${eventText(e)} (${e.code})`;
}

/** A node's resources, `cpu=2,mem=23.5Gi,gpu=0` (memory rounded for reading). */
export function formatCapacity(r: flame.ResourceRequirement): string {
  return `cpu=${r.cpu ?? 0n},mem=${formatMemory(r.memory ?? 0n)},gpu=${r.gpu ?? 0}`;
}

/** `cpu=1,mem=1Gi,gpu=0`, or `-` when the session carries no request. */
export function formatResources(r: flame.ResourceRequirement | undefined): string {
  return r ? formatResreq({ cpu: r.cpu ?? 0n, memory: r.memory ?? 0n, gpu: r.gpu ?? 0 }) : "-";
}

export const sessionStateName = (s: flame.SessionState): string => flame.SessionState[s] ?? String(s);
export const taskStateName = (s: flame.TaskState): string => flame.TaskState[s] ?? String(s);
/** Kiln disables an application only while it drains (unregistered, waiting for its open sessions to close). */
export const applicationStateName = (s: flame.ApplicationState): string =>
  s === flame.ApplicationState.Disabled ? "Draining" : (flame.ApplicationState[s] ?? String(s));
export const shimName = (s: flame.Shim): string => flame.Shim[s] ?? String(s);
export const nodeStateName = (s: flame.NodeState): string => flame.NodeState[s] ?? String(s);
/** `ExecutorIdle` → `Idle`, as Flame prints it. */
export const executorStateName = (s: flame.ExecutorState): string =>
  (flame.ExecutorState[s] ?? String(s)).replace(/^Executor/, "");

const utf8 = new TextDecoder("utf-8", { fatal: true });
// Control characters other than tab, newline and carriage return make output unsafe to print as text.
const UNPRINTABLE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

/**
 * Task input/output for humans: the text when it is printable UTF-8, otherwise its size.
 *
 * @example
 * formatPayload(new TextEncoder().encode("hi")) // "hi"
 * formatPayload(new Uint8Array([0, 1]))         // "<2 bytes>"
 */
export function formatPayload(bytes: Uint8Array | undefined): string {
  if (bytes === undefined || bytes.length === 0) return "";
  try {
    const text = utf8.decode(bytes);
    if (!UNPRINTABLE.test(text)) return text;
  } catch {
    // Not UTF-8: fall through to the size.
  }
  return `<${bytes.length} bytes>`;
}
