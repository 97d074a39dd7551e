import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parse as parseYaml } from "yaml";
import { InvalidArgumentError } from "@kiln/protocol";
import { contextFilePath, resolveTlsFiles, type ContextTls, type TlsFileOptions, type TlsFiles } from "./tls-config.js";

/** Where a client connects when nothing says otherwise. */
export const DEFAULT_ENDPOINT = "http://127.0.0.1:7420";

/** Where the object cache is reached when nothing says otherwise (`kiln up` listens there). */
export const DEFAULT_CACHE_ENDPOINT = "http://127.0.0.1:7422";

/** How to reach a cluster. Every field is optional; see {@link loadConfig} for the resolution order. */
export interface ConnectOptions extends TlsFileOptions {
  /** `http://host:port` or `https://host:port`. */
  endpoint?: string;
  token?: string;
  /** A context name from the config file (default: its `current-context`). */
  context?: string;
  /** Config file to read (default: env KILN_CONFIG, else ~/.kiln/config.yaml). */
  configPath?: string;
  /** Bound on every unary call, ms. Default 60 000. */
  requestTimeoutMs?: number;
  /**
   * How long run()/invoke() keep trying through a lost connection (resending
   * a batch of new tasks with its idempotency key, reopening the watch of
   * created ones) before they fail, ms. Default 60 000.
   */
  patienceMs?: number;
}

export interface LoadConfigOptions extends ConnectOptions {
  /** Environment to read instead of `process.env`. */
  env?: Record<string, string | undefined>;
}

/** The settings a client uses, and where the endpoint came from. */
export interface ResolvedConfig {
  endpoint: string;
  token?: string;
  /** The config-file context in use, if any. */
  context?: string;
  /** Which layer supplied the endpoint. */
  source: "options" | "env" | "config" | "default";
  /** The PEM files for an `https://` endpoint (see {@link readTlsFiles}). */
  tls: TlsFiles;
  /** The config file consulted (it may not exist). */
  configPath: string;
  configFound: boolean;
}

/** Where the object cache is and which token it gets; see {@link loadCacheConfig}. */
export interface CacheConfigOptions extends TlsFileOptions {
  /** `http://host:port` of the object cache. */
  cacheEndpoint?: string;
  /** Token for the object cache. */
  cacheToken?: string;
  /** A context name from the config file (default: its `current-context`). */
  context?: string;
  /** Config file to read (default: env KILN_CONFIG, else ~/.kiln/config.yaml). */
  configPath?: string;
  /** Environment to read instead of `process.env`. */
  env?: Record<string, string | undefined>;
}

/** The object cache a client uses, and where its endpoint came from. */
export interface ResolvedCacheConfig {
  cacheEndpoint: string;
  cacheToken?: string;
  context?: string;
  /** "control-plane": not configured, so the cluster's control plane was asked (see discoverCacheConfig). */
  source: "options" | "env" | "config" | "control-plane" | "default";
  /** The PEM files for an `https://` endpoint (see {@link readTlsFiles}). */
  tls: TlsFiles;
  configPath: string;
  configFound: boolean;
}

interface ContextEntry {
  name: string;
  /** The cluster endpoint, or why it is unusable: only what connects to the cluster fails then. */
  endpoint?: string | InvalidArgumentError;
  token?: string;
  /** The cache endpoint, or why it is unusable (a Flame config's grpc:// cache, say): only cache users fail. */
  cacheEndpoint?: string | InvalidArgumentError;
  /** `cluster.tls-ca`, `cluster.tls-client-cert`, `cluster.tls-client-key`. */
  tls?: ContextTls;
}

/** A context entry that breaks a rule: it fails only the commands that use it. */
interface BrokenContext {
  /** Its name, when it has a readable one. */
  name?: string;
  error: InvalidArgumentError;
}

interface ConfigFile {
  currentContext?: string;
  contexts: ContextEntry[];
  broken: BrokenContext[];
}

/**
 * Resolves endpoint and token: explicit options, then env (KILN_ENDPOINT, else
 * FLAME_ENDPOINT; KILN_TOKEN), then the config file's context, then
 * http://127.0.0.1:7420. A context's token is only used when the endpoint is
 * that context's endpoint, so a token never travels to another server.
 * A missing default config file (~/.kiln/config.yaml) is fine; a missing
 * file named by `configPath` or KILN_CONFIG, a malformed file, or a
 * malformed context that is used throws InvalidArgumentError naming the
 * field. A malformed context breaks only its own users: with the endpoint
 * given by options or env, a malformed current-context is ignored.
 *
 * @example
 * const { endpoint, source } = loadConfig({ context: "prod" });
 */
export function loadConfig(options: LoadConfigOptions = {}): ResolvedConfig {
  const env = options.env ?? process.env;
  const envEndpoint = env.KILN_ENDPOINT || env.FLAME_ENDPOINT;
  const { configPath, file, context } = readContext(options, Boolean(options.endpoint || envEndpoint));

  const [rawEndpoint, field, source]: [string, string, ResolvedConfig["source"]] = options.endpoint
    ? [options.endpoint, "endpoint", "options"]
    : envEndpoint
      ? [envEndpoint, env.KILN_ENDPOINT ? "KILN_ENDPOINT" : "FLAME_ENDPOINT", "env"]
      : context?.endpoint !== undefined
        ? [checked(context.endpoint), "", "config"]
        : [DEFAULT_ENDPOINT, "endpoint", "default"];
  // Context endpoints were checked while reading the file, with their own field names.
  const endpoint = source === "config" ? rawEndpoint : normalizeEndpoint(field, rawEndpoint);
  const contextToken = context?.endpoint === endpoint ? context.token : undefined;
  const token = options.token || env.KILN_TOKEN || contextToken;
  const tls = resolveTlsFiles(options, env, context?.tls, context?.endpoint === endpoint);

  return {
    endpoint,
    ...(token ? { token } : {}),
    ...(context ? { context: context.name } : {}),
    source,
    tls,
    configPath,
    configFound: file !== undefined,
  };
}

/**
 * Resolves the object cache's endpoint and token: explicit options, then env
 * (KILN_CACHE_ENDPOINT, else FLAME_CACHE_ENDPOINT), then the `cache.endpoint`
 * of the config file's context, then http://127.0.0.1:7422. The token is
 * `cacheToken`, else the context's token when the endpoint is that context's
 * cache endpoint, else KILN_TOKEN. Malformed values, and a config file that
 * is missing or malformed, throw InvalidArgumentError naming the field, as
 * in {@link loadConfig}.
 *
 * @example
 * // ~/.kiln/config.yaml: contexts: [{ name: prod, cluster: {...}, cache: { endpoint: "http://10.0.0.5:7422" } }]
 * const { cacheEndpoint, cacheToken } = loadCacheConfig({ context: "prod" });
 */
export function loadCacheConfig(options: CacheConfigOptions = {}): ResolvedCacheConfig {
  const env = options.env ?? process.env;
  const envEndpoint = env.KILN_CACHE_ENDPOINT || env.FLAME_CACHE_ENDPOINT;
  const { configPath, file, context } = readContext(options, Boolean(options.cacheEndpoint || envEndpoint));
  const [rawEndpoint, field, source]: [string, string, ResolvedCacheConfig["source"]] = options.cacheEndpoint
    ? [options.cacheEndpoint, "cacheEndpoint", "options"]
    : envEndpoint
      ? [envEndpoint, env.KILN_CACHE_ENDPOINT ? "KILN_CACHE_ENDPOINT" : "FLAME_CACHE_ENDPOINT", "env"]
      : context?.cacheEndpoint !== undefined
        ? [checked(context.cacheEndpoint), "", "config"]
        : [DEFAULT_CACHE_ENDPOINT, "cacheEndpoint", "default"];
  const cacheEndpoint = source === "config" ? rawEndpoint : normalizeEndpoint(field, rawEndpoint);
  const contextToken = context?.cacheEndpoint === cacheEndpoint ? context.token : undefined;
  const cacheToken = options.cacheToken || contextToken || env.KILN_TOKEN;
  const tls = resolveTlsFiles(options, env, context?.tls, context?.cacheEndpoint === cacheEndpoint);

  return {
    cacheEndpoint,
    ...(cacheToken ? { cacheToken } : {}),
    ...(context ? { context: context.name } : {}),
    source,
    tls,
    configPath,
    configFound: file !== undefined,
  };
}

/**
 * Reads the config file and picks the context. `endpointGiven`: the endpoint
 * does not come from the file, so a malformed current-context is not used.
 */
function readContext(
  options: { env?: Record<string, string | undefined>; configPath?: string; context?: string },
  endpointGiven: boolean,
) {
  const env = options.env ?? process.env;
  // Only the default file may be missing: a file someone named is one they expect to be read.
  const [configPath, namedBy] = options.configPath
    ? [options.configPath, "configPath"]
    : env.KILN_CONFIG
      ? [env.KILN_CONFIG, "KILN_CONFIG"]
      : [path.join(os.homedir(), ".kiln", "config.yaml"), undefined];
  const file = readConfigFile(configPath, namedBy);
  const context = selectContext(file, options.context, configPath, endpointGiven);
  return { configPath, file, context };
}

/**
 * Checks an endpoint URL and returns it as `scheme://host:port`; `note` is
 * appended to the error message (e.g. which file the value came from).
 *
 * @example
 * normalizeEndpoint("endpoint", "http://localhost:7420/") // "http://localhost:7420"
 */
export function normalizeEndpoint(field: string, text: string, note = ""): string {
  const fail = (rule: string): never => {
    throw new InvalidArgumentError(field, rule + note);
  };
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return fail(`"${text}" is not a URL (example: http://127.0.0.1:7420)`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") fail(`"${text}" must start with http:// or https://`);
  if (url.hostname === "") fail(`"${text}" has no host`);
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash || url.username)
    fail(`"${text}" must be only scheme, host and port`);
  return `${url.protocol}//${url.host}`;
}

function readConfigFile(configPath: string, namedBy: string | undefined): ConfigFile | undefined {
  let text: string;
  try {
    text = fs.readFileSync(configPath, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      if (namedBy) throw new InvalidArgumentError(namedBy, `no config file at ${configPath}`);
      return undefined;
    }
    throw new InvalidArgumentError(configPath, `cannot be read: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new InvalidArgumentError(configPath, `is not valid YAML: ${(e as Error).message}`);
  }
  return parseConfig(doc ?? {}, configPath);
}

function parseConfig(doc: unknown, configPath: string): ConfigFile {
  const where = ` (in ${configPath})`;
  const fail = (field: string, rule: string): never => {
    throw new InvalidArgumentError(field, rule + where);
  };
  if (!isRecord(doc)) return fail("(root)", "must be a mapping with current-context and contexts");
  const currentContext = optionalString(doc["current-context"], "current-context", fail);
  const rawContexts = doc.contexts ?? [];
  if (!Array.isArray(rawContexts)) return fail("contexts", "must be a list");
  const contexts: ContextEntry[] = [];
  const broken: BrokenContext[] = [];
  rawContexts.forEach((raw: unknown, i) => {
    const name = isRecord(raw) && typeof raw.name === "string" && raw.name ? raw.name : undefined;
    try {
      const entry = parseContext(raw, `contexts[${i}]`, fail, configPath);
      if (contexts.some((c) => c.name === entry.name)) fail(`contexts[${i}].name`, `"${entry.name}" is given twice`);
      contexts.push(entry);
    } catch (e) {
      if (!(e instanceof InvalidArgumentError)) throw e;
      broken.push({ ...(name !== undefined ? { name } : {}), error: e });
    }
  });
  return { ...(currentContext ? { currentContext } : {}), contexts, broken };
}

function parseContext(
  raw: unknown,
  at: string,
  fail: (field: string, rule: string) => never,
  configPath: string,
): ContextEntry {
  const where = ` (in ${configPath})`;
  if (!isRecord(raw)) return fail(at, "must be a mapping with name and cluster");
  const name = optionalString(raw.name, `${at}.name`, fail);
  if (!name) return fail(`${at}.name`, "is required");
  const cluster = raw.cluster ?? {};
  if (!isRecord(cluster)) return fail(`${at}.cluster`, "must be a mapping with endpoint and token");
  const endpoint = optionalString(cluster.endpoint, `${at}.cluster.endpoint`, fail);
  const token = optionalString(cluster.token, `${at}.cluster.token`, fail);
  const cache = raw.cache ?? {};
  if (!isRecord(cache)) return fail(`${at}.cache`, "must be a mapping with endpoint");
  const cacheEndpoint = optionalString(cache.endpoint, `${at}.cache.endpoint`, fail);
  const entry: ContextEntry = { name };
  const tls = parseContextTls(cluster, `${at}.cluster`, fail, configPath);
  if (tls) entry.tls = tls;
  if (endpoint !== undefined) entry.endpoint = endpointOrError(`${at}.cluster.endpoint`, endpoint, where);
  if (token) entry.token = token;
  if (cacheEndpoint !== undefined) entry.cacheEndpoint = endpointOrError(`${at}.cache.endpoint`, cacheEndpoint, where);
  return entry;
}

/** The context's TLS files; relative paths start from the config file's folder. */
function parseContextTls(
  cluster: Record<string, unknown>,
  at: string,
  fail: (field: string, rule: string) => never,
  configPath: string,
): ContextTls | undefined {
  const tls: ContextTls = {};
  for (const [slot, key] of [
    ["ca", "tls-ca"],
    ["cert", "tls-client-cert"],
    ["key", "tls-client-key"],
  ] as const) {
    const field = `${at}.${key}`;
    const file = optionalString(cluster[key], field, fail);
    if (file) tls[slot] = { path: contextFilePath(configPath, file), field };
  }
  return Object.keys(tls).length > 0 ? tls : undefined;
}

function endpointOrError(field: string, text: string, where: string): string | InvalidArgumentError {
  try {
    return normalizeEndpoint(field, text, where);
  } catch (e) {
    if (e instanceof InvalidArgumentError) return e;
    throw e;
  }
}

/** A context's endpoint where it is the one to use: its error, kept from reading the file, is thrown now. */
function checked(endpoint: string | InvalidArgumentError): string {
  if (endpoint instanceof InvalidArgumentError) throw endpoint;
  return endpoint;
}

function selectContext(
  file: ConfigFile | undefined,
  wanted: string | undefined,
  configPath: string,
  endpointGiven: boolean,
): ContextEntry | undefined {
  const name = wanted || file?.currentContext;
  if (!name) return undefined;
  // A malformed entry of that name (or a second entry of it) makes the context unusable, not the file.
  const broken = file?.broken.find((b) => b.name === name);
  if (broken) {
    if (!wanted && endpointGiven) return undefined;
    throw broken.error;
  }
  const found = file?.contexts.find((c) => c.name === name);
  if (found) return found;
  const field = wanted ? "context" : "current-context";
  if (!file) throw new InvalidArgumentError(field, `unknown context "${name}": no config file at ${configPath}`);
  const known = file.contexts.map((c) => c.name).join(", ") || "none";
  const unnamed = file.broken.filter((b) => b.name === undefined).map((b) => `; ${b.error.message}`);
  throw new InvalidArgumentError(
    field,
    `unknown context "${name}" (known: ${known}${unnamed.join("")}; in ${configPath})`,
  );
}

function optionalString(
  value: unknown,
  field: string,
  fail: (field: string, rule: string) => never,
): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") return fail(field, "must be a string");
  return value;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
