import {
  ObjectCache,
  type GetObjectOptions,
  type ObjectCacheOptions,
  type ObjectStat,
  type ObjectTarget,
} from "./cache-client.js";
import type { ObjectRef } from "@kiln/protocol";
import { openObjectCache } from "../client/cache-discovery.js";

/**
 * Module-level object functions, bound to one ObjectCache found on first use:
 * the configured one (KILN_CACHE_ENDPOINT, the config file's context), else
 * the one the control plane advertises, else http://127.0.0.1:7422; see
 * discoverCacheConfig.
 */

let current: Promise<ObjectCache> | undefined;

/**
 * The ObjectCache the module-level functions use, found on the first call.
 *
 * @example
 * console.log((await defaultObjectCache()).endpoint); // http://127.0.0.1:7422 unless configured or advertised
 */
export function defaultObjectCache(): Promise<ObjectCache> {
  if (current) return current;
  const opening: Promise<ObjectCache> = openObjectCache().catch((err: unknown) => {
    // A bad configuration is reported on every call until it is fixed (unless configureObjects replaced it).
    if (current === opening) current = undefined;
    throw err;
  });
  current = opening;
  return opening;
}

/**
 * Points the module-level functions at another cache: an ObjectCache you
 * built, or options for a new one. The previous default is closed.
 *
 * @example
 * configureObjects({ endpoint: "http://10.0.0.5:7422", token: process.env.CACHE_TOKEN });
 */
export function configureObjects(cache: ObjectCache | ObjectCacheOptions): ObjectCache {
  const next = cache instanceof ObjectCache ? cache : new ObjectCache(cache);
  const previous = current;
  current = Promise.resolve(next);
  void previous?.then(
    (c) => c !== next && c.close(),
    () => undefined,
  );
  return next;
}

/**
 * Stores `value` under `app/session` (new id) or at `app/session/id`; see ObjectCache.putObject.
 *
 * @example
 * const ref = await putObject("my-app/s1", { weights: new Float64Array(1024) });
 */
export async function putObject(keyOrPrefix: string, value: unknown): Promise<ObjectRef> {
  return (await defaultObjectCache()).putObject(keyOrPrefix, value);
}

/**
 * Reads an object's current value, base and deltas combined; see ObjectCache.getObject.
 *
 * @example
 * const log = await getObject<string[]>(ref);
 */
export async function getObject<T = unknown>(target: ObjectTarget, options?: GetObjectOptions<T>): Promise<T> {
  return (await defaultObjectCache()).getObject<T>(target, options);
}

/**
 * Replaces the object a ref names; see ObjectCache.updateObject.
 *
 * @example
 * ref = await updateObject(ref, { step: 2 });
 */
export async function updateObject(target: ObjectTarget, value: unknown): Promise<ObjectRef> {
  return (await defaultObjectCache()).updateObject(target, value);
}

/**
 * Appends a delta to the object a ref names; see ObjectCache.patchObject.
 *
 * @example
 * ref = await patchObject(ref, ["another line"]);
 */
export async function patchObject(target: ObjectTarget, delta: unknown): Promise<ObjectRef> {
  return (await defaultObjectCache()).patchObject(target, delta);
}

/**
 * Deletes a key, `app/session`, or `app/*`; returns how many objects went.
 *
 * @example
 * await deleteObjects("my-app/s1");
 */
export async function deleteObjects(prefixOrKey: string): Promise<number> {
  return (await defaultObjectCache()).deleteObjects(prefixOrKey);
}

/**
 * Stores raw bytes (a file, streamed, or bytes in memory) at a key or prefix, checking the stored sha256.
 *
 * @example
 * const ref = await uploadObject("my-app/data/input.parquet", "./input.parquet");
 */
export async function uploadObject(keyOrPrefix: string, source: string | Uint8Array): Promise<ObjectRef> {
  return (await defaultObjectCache()).uploadObject(keyOrPrefix, source);
}

/**
 * Streams an object into a file, atomically and sha256-checked.
 *
 * @example
 * await downloadObject(ref, "./input.parquet");
 */
export async function downloadObject(target: ObjectTarget, file: string, options?: { sha256?: string }): Promise<void> {
  return (await defaultObjectCache()).downloadObject(target, file, options);
}

/**
 * Version, size, sha256 and delta count of one key.
 *
 * @example
 * const { version } = await statObject("my-app/s1/result");
 */
export async function statObject(key: string): Promise<ObjectStat> {
  return (await defaultObjectCache()).statObject(key);
}

/**
 * Every object under `app` or `app/session`, sorted by key.
 *
 * @example
 * const keys = (await listObjects("my-app")).map((o) => o.key);
 */
export async function listObjects(prefix: string): Promise<ObjectStat[]> {
  return (await defaultObjectCache()).listObjects(prefix);
}
