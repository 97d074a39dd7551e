import { InvalidArgumentError, KilnError } from "@kiln/protocol";
import { discoverCacheConfig, objectCacheFor, type ObjectCache, type ResolvedCacheConfig } from "@kiln/sdk";
import { KilnServer } from "../net/healthz.js";
import { isTokenRefused, isUnreachable, TokenRefusedError, UnreachableError, UsageError } from "./exit-codes.js";
import { explainWrongServer } from "./identify-server.js";
import { settingUsageError, tlsFileOptions, type GlobalOptions } from "./options.js";

/**
 * The object cache the global options point at: --cache-endpoint, else
 * KILN_CACHE_ENDPOINT, else the config context's cache, else the one the
 * control plane (--endpoint …) advertises, else http://127.0.0.1:7422.
 * A malformed value is a usage error.
 */
export async function resolveCacheConfig(globals: GlobalOptions): Promise<ResolvedCacheConfig> {
  try {
    return await discoverCacheConfig({
      ...(globals.cacheEndpoint ? { cacheEndpoint: globals.cacheEndpoint } : {}),
      ...(globals.endpoint ? { endpoint: globals.endpoint } : {}),
      ...(globals.token ? { token: globals.token, cacheToken: globals.token } : {}),
      ...(globals.context ? { context: globals.context } : {}),
      ...(globals.config ? { configPath: globals.config } : {}),
      ...tlsFileOptions(globals),
    });
  } catch (err) {
    throw err instanceof InvalidArgumentError ? settingUsageError(err) : err;
  }
}

/**
 * Opens the configured object cache, runs `fn`, and always closes it. A
 * "cannot reach" failure comes out as an UnreachableError naming the cache, a refused token as a
 * TokenRefusedError.
 *
 * @example
 * await withCache(cmd.optsWithGlobals(), (cache) => cache.listObjects("my-app"));
 */
export async function withCache<T>(globals: GlobalOptions, fn: (cache: ObjectCache) => Promise<T>): Promise<T> {
  const resolved = await resolveCacheConfig(globals);
  const { cacheEndpoint, cacheToken } = resolved;
  // Already resolved with the command's --config/--context: reading the config again would ignore them.
  let cache: ObjectCache;
  try {
    cache = objectCacheFor(resolved);
  } catch (err) {
    throw err instanceof InvalidArgumentError ? settingUsageError(err) : err;
  }
  try {
    return await fn(cache);
  } catch (err) {
    // Only the cache's own failures: the cluster's pass on to withClient, which names the cluster.
    const fromCluster = err instanceof KilnError && err.endpoint !== undefined && err.endpoint !== cacheEndpoint;
    if (!fromCluster && isTokenRefused(err))
      throw new TokenRefusedError("the object cache", cacheEndpoint, { cause: err });
    const explanation = fromCluster
      ? undefined
      : await explainWrongServer(cacheEndpoint, KilnServer.ObjectCache, err, cacheToken);
    if (explanation !== undefined || (!fromCluster && isUnreachable(err)))
      throw new UnreachableError(cacheEndpoint, {
        cause: err,
        what: "the object cache",
        flag: "--cache-endpoint",
        ...(explanation ? { explanation } : {}),
      });
    // A key or prefix that breaks the rules is a mistake in what was typed, wherever it was caught.
    if (err instanceof InvalidArgumentError) throw new UsageError(`${err.message} (${err.code})`);
    throw err;
  } finally {
    cache.close();
  }
}
