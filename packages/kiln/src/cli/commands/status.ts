import { toKilnError } from "@kiln/protocol";
import { type KilnClient } from "@kiln/sdk";
import type { kiln } from "@kiln/protocol/proto";
import type { Command } from "commander";
import { HEALTHZ_PATH, KilnServer, type HealthzBody } from "../../net/healthz.js";
import { resolveCacheConfig } from "../cache-client.js";
import { connectWith, explainCallFailure } from "../client.js";
import { UnreachableError } from "../exit-codes.js";
import { describeServer, identifyServer } from "../identify-server.js";
import { printJson } from "../json.js";
import { outputOption, type GlobalOptions } from "../options.js";
import { renderFields } from "../table.js";

/** `kiln status -o json`, and what the table shows. */
type ClusterStatus = {
  controlPlane: { endpoint: string; up: boolean; version?: string; error?: string };
  nodes?: { total: number; ready: number };
  executors?: number;
  sessions?: { open: number };
  cache: { endpoint: string; source: string; healthy: boolean; backend?: string; error?: string };
};

const CACHE_HEALTH_TIMEOUT_MS = 5_000;

/** Adds `kiln status`. */
export function registerStatus(program: Command): void {
  program
    .command("status")
    .description("is the cluster up: the control plane, its nodes, executors and open sessions, and the object cache")
    .addOption(outputOption())
    .addHelpText(
      "after",
      "\nExit 0 when the control plane and the object cache both answer, 3 when either cannot be reached.\n" +
        "The cache is the one --cache-endpoint, KILN_CACHE_ENDPOINT or the config context names, else the one\n" +
        "the control plane advertises.\n" +
        "\nExamples:\n  kiln status\n  kiln --endpoint http://10.0.0.5:7420 status -o json\n",
    )
    .action(async (f: { output: string }, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const client = await connectWith(globals);
      try {
        const { status, failure } = await clusterStatus(client, globals);
        if (f.output === "json") printJson(status);
        else process.stdout.write(statusTable(status));
        if (failure) throw failure;
      } finally {
        client.close();
      }
    });
}

/** Asks the control plane and the cache; `failure` is the error to exit with (ExitCode.Unreachable) when one is down. */
async function clusterStatus(
  client: KilnClient,
  globals: GlobalOptions,
): Promise<{ status: ClusterStatus; failure?: Error }> {
  let info: kiln.ClusterInfo | undefined;
  let failure: Error | undefined;
  let controlPlaneError = "";
  try {
    info = await client.clusterInfo();
  } catch (err) {
    const explained = await explainCallFailure(client, err, globals.token);
    if (!(explained instanceof UnreachableError)) throw explained;
    failure = explained;
    controlPlaneError = explained.explanation ?? toKilnError(err).message;
  }
  const cacheConfig = await resolveCacheConfig(globals);
  const { health: cache, wrongServer } = await cacheHealth(cacheConfig.cacheEndpoint, cacheConfig.cacheToken);
  failure ??= cache.error
    ? new UnreachableError(cacheConfig.cacheEndpoint, {
        cause: new Error(cache.error),
        what: "the object cache",
        flag: "--cache-endpoint",
        ...(wrongServer ? { explanation: cache.error } : {}),
      })
    : undefined;
  const status: ClusterStatus = {
    controlPlane: info
      ? { endpoint: client.endpoint, up: true, version: info.version }
      : { endpoint: client.endpoint, up: false, error: controlPlaneError },
    ...(info
      ? {
          nodes: { total: info.nodes, ready: info.readyNodes },
          executors: info.executors,
          sessions: { open: info.openSessions },
        }
      : {}),
    cache: { endpoint: cacheConfig.cacheEndpoint, source: cacheConfig.source, ...cache },
  };
  return { status, ...(failure ? { failure } : {}) };
}

type CacheHealth = { healthy: boolean; backend?: string; error?: string };

/**
 * Whether the object cache at `endpoint` answers `/healthz` as Kiln's object
 * cache, and its backend; else what is wrong, and whether that is another
 * server answering there (`wrongServer`).
 */
async function cacheHealth(
  endpoint: string,
  token: string | undefined,
): Promise<{ health: CacheHealth; wrongServer: boolean }> {
  let failure: string;
  try {
    const res = await fetch(`${endpoint}${HEALTHZ_PATH}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(CACHE_HEALTH_TIMEOUT_MS),
    });
    const body = (await res.json().catch(() => ({}))) as Partial<HealthzBody>;
    const backend = body.details?.backend;
    if (res.ok && body.server === KilnServer.ObjectCache)
      return { health: { healthy: true, ...(typeof backend === "string" ? { backend } : {}) }, wrongServer: false };
    failure = `HTTP ${res.status}`;
  } catch (err) {
    const cause = (err as Error).cause;
    failure = cause instanceof Error ? cause.message : (err as Error).message;
  }
  const found = await identifyServer(endpoint, token);
  if (!found) return { health: { healthy: false, error: failure }, wrongServer: false };
  return {
    health: { healthy: false, error: `${describeServer(found)} answers there, not the object cache` },
    wrongServer: true,
  };
}

const CACHE_SOURCES: Record<string, string> = {
  options: "from --cache-endpoint",
  env: "from KILN_CACHE_ENDPOINT",
  config: "from the config context",
  "control-plane": "advertised by the control plane",
  default: "the default",
};

function statusTable(s: ClusterStatus): string {
  const cp = s.controlPlane;
  const fields: [string, string][] = [
    ["Control plane", `${cp.endpoint} (${cp.up ? `up, kiln ${cp.version}` : `unreachable: ${cp.error}`})`],
  ];
  if (s.nodes) fields.push(["Nodes", `${s.nodes.total} (${s.nodes.ready} ready)`]);
  if (s.executors !== undefined) fields.push(["Executors", String(s.executors)]);
  if (s.sessions) fields.push(["Sessions", `${s.sessions.open} open`]);
  const c = s.cache;
  const health = c.healthy ? `healthy${c.backend ? `, ${c.backend} backend` : ""}` : `unreachable: ${c.error}`;
  fields.push(["Object cache", `${c.endpoint} (${health}; ${CACHE_SOURCES[c.source] ?? c.source})`]);
  return renderFields(fields);
}
