import { CodecError, decodeValue, ErrorCode, KilnError, isObjectRef, type ObjectRef } from "@kiln/protocol";
import type { ObjectCache } from "../objects/cache-client.js";
import { defaultObjectCache } from "../objects/objects.js";
import {
  decodeCall,
  decodeOutput,
  decodeServiceSpec,
  RUNNER_FORMAT,
  type CapturedOutput,
  type ServiceSpec,
} from "@kiln/protocol/runner";

/** Why getData failed: bytes that are no codec value, a value that is no Runner record, or a fetch from the cache. */
export type GetDataErrorKind = "decode" | "format" | "cache";

/**
 * The one error getData throws. `kind` says which step failed; `code` is
 * INVALID_ARGUMENT for "decode" and "format", and the cache error's code
 * (NOT_FOUND, INVALID_ARGUMENT for a foreign endpoint, UNAVAILABLE…) for "cache".
 */
export class GetDataError extends KilnError {
  readonly kind: GetDataErrorKind;
  constructor(kind: GetDataErrorKind, message: string, options?: { cause?: unknown; code?: ErrorCode }) {
    super(options?.code ?? ErrorCode.InvalidArgument, `${kind} error: ${message}`, { cause: options?.cause });
    this.name = "GetDataError";
    this.kind = kind;
  }
}

/** A task's input: which call it is and its arguments (TypeScript calls have no keyword arguments). */
export interface InputData {
  type: "input";
  /** `<module>#<export>`. */
  service: string;
  /** The method of a class instance; null for a function. */
  method: string | null;
  args: unknown[];
  metadata: { format: string };
}

/** A task's output: its result or error, and what the call printed. */
export interface OutputData {
  type: "output";
  /** The return value (fetched from the cache when it was stored there); undefined when the call threw. */
  result: unknown;
  /** The remote error when the call threw. */
  error?: Error;
  metadata: CapturedOutput & { format: string; durationMs: number; host: string; pid: number; stored: boolean };
}

/** A session's common data: the service the session runs (constructor arguments in `args`). */
export interface ServiceData extends Omit<ServiceSpec, "format"> {
  type: "service";
  metadata: { format: string };
}

export type RunnerData = InputData | OutputData | ServiceData;

export interface GetDataOptions {
  /** Where ObjectRefs are fetched from; default: the configured cache (KILN_CACHE_ENDPOINT or the config file). */
  cache?: ObjectCache;
  /** How many levels of ObjectRefs inside fetched values are fetched in turn; deeper ones stay refs. Default 4. */
  maxDepth?: number;
}

/** Levels of nested ObjectRefs getData fetches unless told otherwise. */
export const DEFAULT_MAX_DEPTH = 4;

/**
 * Turns a Runner task's stored input or output (or a Runner session's common
 * data) back into values, fetching the ObjectRefs inside them (up to
 * `maxDepth` levels) from the configured cache only: a ref naming any other
 * endpoint is refused, never followed. Decoding builds data only, so hostile
 * bytes cannot run code; they give a GetDataError.
 *
 * @example
 * const task = await client.getTask(sessionId, "1");
 * const input = await getData(task.input!);   // { type: "input", method: null, args: [1000000], ... }
 * const output = await getData(task.output!); // { type: "output", result: 3.1418, metadata: { stdout: "..." } }
 */
export async function getData(bytes: Uint8Array, options: GetDataOptions = {}): Promise<RunnerData> {
  const data = decodeRecord(bytes);
  const fetcher = new RefFetcher(options.cache, options.maxDepth ?? DEFAULT_MAX_DEPTH);
  if (data.type === "output") {
    data.result = await fetcher.resolve(data.result, 0);
  } else {
    data.args = (await fetcher.resolve(data.args, 0)) as unknown[];
  }
  return data;
}

function decodeRecord(bytes: Uint8Array): RunnerData {
  let value: unknown;
  try {
    value = decodeValue(bytes);
  } catch (err) {
    throw new GetDataError("decode", messageOf(err), { cause: err });
  }
  const type = typeof value === "object" && value !== null ? (value as Record<string, unknown>).type : undefined;
  try {
    if (type === "input") {
      const { format, service, method, args } = decodeCall(bytes);
      return { type: "input", service, method, args, metadata: { format } };
    }
    if (type === "output" || type === "error") {
      const out = decodeOutput(bytes);
      const { stdout, stderr, stdoutTruncated, stderrTruncated, durationMs, host, pid } = out;
      return {
        type: "output",
        result: out.resultRef ?? out.result,
        ...(out.error ? { error: out.error } : {}),
        metadata: {
          format: RUNNER_FORMAT,
          ...{ stdout, stderr, stdoutTruncated, stderrTruncated, durationMs, host, pid },
          stored: out.resultRef !== undefined,
        },
      };
    }
    if (type !== undefined)
      throw new GetDataError(
        "format",
        `type must be "input", "output" or "error" (got ${typeof type === "string" ? JSON.stringify(type) : typeof type})`,
      );
    const { format, ...spec } = decodeServiceSpec(bytes);
    return { type: "service", ...spec, metadata: { format } };
  } catch (err) {
    if (err instanceof GetDataError) throw err;
    if (err instanceof CodecError) throw new GetDataError("decode", messageOf(err), { cause: err });
    throw new GetDataError("format", messageOf(err), { cause: err });
  }
}

/**
 * Replaces ObjectRefs by their values, fetching each key once. Decoded values
 * may share objects or hold cycles (the codec keeps them), so each container
 * is visited once.
 */
class RefFetcher {
  private cacheInstance: ObjectCache | undefined;
  private readonly fetched = new Map<string, Promise<unknown>>();
  private readonly visited = new Set<object>();

  constructor(
    cache: ObjectCache | undefined,
    private readonly maxDepth: number,
  ) {
    this.cacheInstance = cache;
  }

  async resolve(value: unknown, depth: number): Promise<unknown> {
    if (isObjectRef(value)) {
      if (depth >= this.maxDepth) return value;
      return this.resolve(await this.fetch(value), depth + 1);
    }
    if (typeof value !== "object" || value === null || this.visited.has(value)) return value;
    this.visited.add(value);
    if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof Date) return value;
    if (value instanceof Map) {
      await Promise.all([...value].map(async ([k, v]) => value.set(k, await this.resolve(v, depth))));
      return value;
    }
    if (value instanceof Set) {
      const items = await Promise.all([...value].map((v) => this.resolve(v, depth)));
      value.clear();
      for (const item of items) value.add(item);
      return value;
    }
    const record = value as Record<string, unknown>;
    await Promise.all(
      Object.keys(record).map(async (k) => {
        const resolved = await this.resolve(record[k], depth);
        if (resolved !== record[k])
          Object.defineProperty(record, k, { value: resolved, enumerable: true, writable: true, configurable: true });
      }),
    );
    return value;
  }

  private fetch(ref: ObjectRef): Promise<unknown> {
    const id = `${ref.endpoint} ${ref.key}`;
    let pending = this.fetched.get(id);
    if (!pending) {
      pending = this.cache()
        .then((cache) => cache.getObject(ref))
        .catch((err: unknown) => {
          const code = err instanceof KilnError ? err.code : ErrorCode.Unavailable;
          throw new GetDataError("cache", `${ref.key}: ${messageOf(err)}`, { cause: err, code });
        });
      this.fetched.set(id, pending);
    }
    return pending;
  }

  private async cache(): Promise<ObjectCache> {
    this.cacheInstance ??= await defaultObjectCache();
    return this.cacheInstance;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
