import * as os from "node:os";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

/** The built-in application that serves ping (`kiln ping` and `npm run bench` drive it). */
export const PING_APPLICATION = "kiln-ping";

/** What a kiln-ping task asks for. */
export interface PingInput {
  durationMs?: number;
  memoryBytes?: number;
}

/** What a kiln-ping task answers. */
export interface PingOutput {
  host: string;
  pid: number;
  elapsedMs: number;
  memoryBytes: number;
}

// Asked once: os.hostname() is a system call, and the benchmark service answers thousands of tasks a second.
const HOST = os.hostname();
const KNOWN_FIELDS = new Set(["durationMs", "memoryBytes"]);
// One allocation per task; larger asks are almost certainly a unit mistake.
const MAX_MEMORY_BYTES = 2 ** 32;

function fail(rule: string): never {
  throw new Error(`kiln-ping input: ${rule} (example: {"durationMs": 10, "memoryBytes": 1048576})`);
}

function optionalNumber(obj: Record<string, unknown>, field: string, max: number): number | undefined {
  const v = obj[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > max)
    fail(`${field} must be a number from 0 to ${max} (got ${JSON.stringify(v)})`);
  return v;
}

/**
 * Parses a task input: empty means "do nothing"; otherwise a JSON object with
 * optional `durationMs` and `memoryBytes` (null counts as absent).
 *
 * @example
 * parsePingInput(new TextEncoder().encode('{"durationMs":5}')) // { durationMs: 5 }
 */
export function parsePingInput(input: Uint8Array | undefined): PingInput {
  if (!input || input.length === 0) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(input));
  } catch (err) {
    fail(`not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) fail("must be a JSON object");
  const obj = parsed as Record<string, unknown>;
  const unknown = Object.keys(obj).filter((k) => !KNOWN_FIELDS.has(k));
  if (unknown.length > 0) fail(`unknown field ${JSON.stringify(unknown[0])} (known: durationMs, memoryBytes)`);
  const out: PingInput = {};
  const durationMs = optionalNumber(obj, "durationMs", 24 * 3600 * 1000);
  const memoryBytes = optionalNumber(obj, "memoryBytes", MAX_MEMORY_BYTES);
  if (durationMs !== undefined) out.durationMs = durationMs;
  if (memoryBytes !== undefined) {
    if (!Number.isInteger(memoryBytes)) fail(`memoryBytes must be a whole number (got ${memoryBytes})`);
    out.memoryBytes = memoryBytes;
  }
  return out;
}

/**
 * Holds `memoryBytes` of touched memory for `durationMs`, then reports where
 * and how long it ran. A cancelled task (its `task.signal` aborts) stops
 * waiting at once, so it frees its executor.
 */
export async function ping(input: PingInput, task?: { readonly signal: AbortSignal }): Promise<PingOutput> {
  const start = performance.now();
  const memoryBytes = input.memoryBytes ?? 0;
  // Filling with a non-zero byte touches every page, so the memory is really used.
  const held = memoryBytes > 0 ? Buffer.alloc(memoryBytes, 1) : undefined;
  // The service runtime makes a task's signal on first read, so only a task that waits reads it.
  if (input.durationMs) await sleep(input.durationMs, undefined, task ? { signal: task.signal } : {});
  const elapsedMs = Math.round((performance.now() - start) * 1000) / 1000;
  return { host: HOST, pid: process.pid, elapsedMs, memoryBytes: held?.length ?? 0 };
}
