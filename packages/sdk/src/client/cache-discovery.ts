import { objectCacheFor, type ObjectCache } from "../objects/cache-client.js";
import { KilnClient } from "./client.js";
import {
  loadCacheConfig,
  loadConfig,
  normalizeEndpoint,
  type CacheConfigOptions,
  type ConnectOptions,
  type ResolvedCacheConfig,
} from "./config.js";
import { readTlsFiles } from "./tls-config.js";

/** How long a client waits for the control plane to say where its cache is, before it uses the default. */
const DISCOVERY_TIMEOUT_MS = 5_000;

/** Where the cluster and, if set explicitly, its object cache are: what {@link discoverCacheConfig} reads. */
export interface DiscoverCacheOptions extends CacheConfigOptions, Omit<ConnectOptions, "requestTimeoutMs"> {}

/**
 * The object cache a client of the cluster uses. One set explicitly wins
 * (`cacheEndpoint`, KILN_CACHE_ENDPOINT, the config context's cache); else
 * the one the control plane advertises (GetClusterInfo), with the cluster's
 * token; else http://127.0.0.1:7422. So a cluster started with
 * `kiln up --port 9000` needs only KILN_ENDPOINT. A control plane that
 * cannot be asked (not running, a Flame cluster, no cache advertised) leaves
 * the default; `client` is asked instead of a new connection when given.
 *
 * @example
 * const { cacheEndpoint, source } = await discoverCacheConfig({ endpoint: "http://127.0.0.1:9000" });
 * // "http://127.0.0.1:9002", "control-plane"
 */
export async function discoverCacheConfig(
  options: DiscoverCacheOptions = {},
  client?: KilnClient,
): Promise<ResolvedCacheConfig> {
  const configured = loadCacheConfig(options);
  if (configured.source !== "default") return configured;
  const cluster = loadConfig(options);
  const asked =
    client ??
    new KilnClient({
      endpoint: cluster.endpoint,
      ...(cluster.token ? { token: cluster.token } : {}),
      tls: readTlsFiles(cluster.tls),
      requestTimeoutMs: DISCOVERY_TIMEOUT_MS,
    });
  let advertised: string;
  try {
    advertised = (await asked.clusterInfo()).cacheEndpoint;
  } catch {
    return configured;
  } finally {
    if (asked !== client) asked.close();
  }
  if (!advertised) return configured;
  const cacheToken = options.cacheToken || cluster.token;
  return {
    ...configured,
    cacheEndpoint: normalizeEndpoint(
      "cacheEndpoint",
      advertised,
      ` (advertised by the control plane at ${cluster.endpoint})`,
    ),
    ...(cacheToken ? { cacheToken } : {}),
    // Like the token, the cluster's TLS files go to the cache it advertises, unless the cache's own are set.
    tls: { ...cluster.tls, ...configured.tls },
    source: "control-plane",
  };
}

/**
 * An ObjectCache for the cache {@link discoverCacheConfig} finds.
 *
 * @example
 * const cache = await openObjectCache();
 * try { console.log(await cache.listObjects("my-app")); } finally { cache.close(); }
 */
export async function openObjectCache(options: DiscoverCacheOptions = {}, client?: KilnClient): Promise<ObjectCache> {
  return objectCacheFor(await discoverCacheConfig(options, client));
}
