import * as os from "node:os";
import * as path from "node:path";
import { Option, type Command } from "commander";
import { InvalidArgumentError } from "@kiln/protocol";
import { DEFAULT_ENDPOINT, loadConfig, type TlsFiles } from "@kiln/sdk";
import { DEFAULT_PORT } from "../../control/config.js";
import { redactPassword } from "../../control/store/open-store.js";
import { resolveCacheConfig } from "../cache-client.js";
import { UsageError } from "../exit-codes.js";
import {
  byteSize,
  duration,
  resreqText,
  settingUsageError,
  tlsFileOptions,
  wholeNumber,
  type GlobalOptions,
} from "../options.js";
import { addServerTlsOptions, resolveServerTls, type ServerTls, type ServerTlsFlags } from "../server-tls.js";
import { writeUpContext } from "../up-context.js";
import { nodeTokenFileOption, nodeTokenOf, nodeTokenOption, warnIfTokenExposed } from "../secrets.js";
import { DEFAULT_PORT_FLAGS, serveUntilSignal } from "../signals.js";
import { boundHeapGrowth } from "../../util/heap-growth.js";

const DEFAULT_DATA_DIR = path.join(os.homedir(), ".kiln", "data");
const DEFAULT_HOST = "127.0.0.1";

const portOption = (): Option =>
  new Option("--port <n>", "port to listen on (0 picks a free one)")
    .argParser(wholeNumber(0, 65535))
    .default(DEFAULT_PORT);
const hostOption = (): Option =>
  new Option("--host <address>", "address to listen on; beyond loopback a --token is required").default(DEFAULT_HOST);
const dataDirOption = (): Option =>
  new Option("--data-dir <dir>", "where the cluster state lives").default(DEFAULT_DATA_DIR);
const maxPackageBytesOption = (): Option =>
  new Option("--max-package-bytes <size>", "largest total size one package may extract to (default 4g)").argParser(
    byteSize,
  );
const maxPackageEntriesOption = (): Option =>
  new Option(
    "--max-package-entries <n>",
    "most files, directories and links in one package (default 100000)",
  ).argParser(wholeNumber(1));
const retentionOption = (): Option =>
  new Option(
    "--retention <duration>",
    "delete closed sessions, their tasks and events, once closed this long: 7d, 12h, 30m, or 0 for at once (default 7d)",
  ).argParser(duration);
const storeOption = (): Option =>
  new Option(
    "--store <url>",
    "keep the cluster state in PostgreSQL, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, instead of the SQLite file in --data-dir",
  ).env("KILN_STORE");
const executorsOption = (): Option =>
  new Option("--executors <n>", "executors on this node (default: one per CPU)").argParser(wholeNumber(1, 4096));

interface PackageLimitFlags {
  maxPackageBytes?: number;
  maxPackageEntries?: number;
}

interface UpFlags extends PackageLimitFlags, ServerTlsFlags {
  dataDir: string;
  store?: string;
  retention?: number;
  port: number;
  cachePort?: number;
  host: string;
  executors?: number;
}

interface ServerFlags extends ServerTlsFlags {
  dataDir: string;
  store?: string;
  port: number;
  host: string;
  heartbeatTimeout?: number;
  drainTimeout?: number;
  retries?: number;
  maxTaskBytes?: number;
  maxRequestBytes?: number;
  defaultResreq?: string;
  retention?: number;
}

interface AgentFlags extends PackageLimitFlags {
  reconnectMaxDelay?: number;
  name?: string;
  executors?: number;
  cpus?: number;
  workDir?: string;
}

/** `kiln <command>` as a user types it to reach `endpoint`: --endpoint only when it is not the default. */
function kilnCommand(endpoint: string, command: string): string {
  return endpoint === DEFAULT_ENDPOINT ? `kiln ${command}` : `kiln --endpoint ${endpoint} ${command}`;
}

/** One line for the start banner: what clients must trust, when the server made its own CA. */
function trustLine(tls: ServerTls | undefined): string {
  if (!tls?.localCa) return "";
  return `  TLS: clients trust ${tls.localCa.file} (--tls-ca or KILN_TLS_CA; SHA-256 ${tls.localCa.fingerprint})\n`;
}

/** Adds `kiln up`, `kiln server` and `kiln agent`. */
export function registerServerCommands(program: Command): void {
  const up = program
    .command("up")
    .description("run a whole cluster on this machine (control plane + one agent) until Ctrl-C")
    .addOption(dataDirOption())
    .addOption(portOption())
    .addOption(
      new Option("--cache-port <n>", "object cache port (default: --port + 2; a free one when --port is 0)").argParser(
        wholeNumber(0, 65535),
      ),
    )
    .addOption(hostOption())
    .addOption(executorsOption())
    .addOption(storeOption())
    .addOption(retentionOption())
    .addOption(maxPackageBytesOption())
    .addOption(maxPackageEntriesOption());
  addServerTlsOptions(up, { clientCa: false })
    .addHelpText(
      "after",
      "\nThe global --token, when given, is required from every client and agent. Give it with\n" +
        "--token-file (or - for stdin) so the service processes of this cluster cannot read it from\n" +
        "this process's environment or command line; its children get it over a pipe.\n" +
        "With --tls, the config context kiln-up is written (endpoints and the CA to trust), and made the\n" +
        "current context unless another one is, so `kiln ping` needs no flags; see docs/security.md.\n",
    )
    .action(async (f: UpFlags, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const { token } = globals;
      warnIfTokenExposed(cmd, { token: "the cluster token" });
      const tls = resolveServerTls(f, path.join(f.dataDir, "tls"), f.host);
      // The local agent verifies the servers with the local CA, or with the CA the user gave for their certificate.
      const agentCa = tls?.localCa?.file ?? globals.tlsCa;
      const { startLocalCluster } = await import("../../cluster/local-cluster.js");
      await serveUntilSignal(
        "the cluster",
        () =>
          startLocalCluster({
            dataDir: f.dataDir,
            host: f.host,
            port: f.port,
            cachePort: f.cachePort,
            executors: f.executors,
            maxPackageBytes: f.maxPackageBytes,
            maxPackageEntries: f.maxPackageEntries,
            token,
            controlPlane: {
              ...(f.retention !== undefined ? { retentionMs: f.retention } : {}),
              ...(f.store !== undefined ? { store: f.store } : {}),
            },
            ...(tls ? { tls: { ...tls.files, ...(agentCa ? { caFile: path.resolve(agentCa) } : {}) } } : {}),
          }),
        (cluster) =>
          process.stdout.write(
            `Kiln is up at ${cluster.endpoint}\n  object cache: ${cluster.cacheEndpoint}\n  data: ${f.dataDir}\n` +
              (f.store === undefined ? "" : `  store: ${redactPassword(f.store)}\n`) +
              trustLine(tls) +
              writeUpContext(globals.config, {
                endpoint: cluster.endpoint,
                cacheEndpoint: cluster.cacheEndpoint,
                ...(tls?.localCa ? { caFile: tls.localCa.file } : {}),
              }) +
              `Try \`${kilnCommand(cluster.endpoint, "ping")}\` or \`${kilnCommand(cluster.endpoint, "list -n")}\` ` +
              `in another terminal${token ? " (with the same --token or KILN_TOKEN)" : ""}. Press Ctrl-C to stop.\n`,
          ),
        { ...DEFAULT_PORT_FLAGS, cache: "--cache-port" },
      );
    });

  const server = program
    .command("server")
    .description("run the control plane only (agents join with `kiln agent --endpoint URL`)")
    .addOption(dataDirOption())
    .addOption(storeOption())
    .addOption(hostOption())
    .addOption(portOption())
    .addOption(
      new Option("--heartbeat-timeout <ms>", "drop an agent silent this long (default 15000)").argParser(
        wholeNumber(1),
      ),
    )
    .addOption(
      new Option(
        "--drain-timeout <ms>",
        "wait this long for a lost agent before requeueing its tasks (default 30000)",
      ).argParser(wholeNumber(0)),
    )
    .addOption(
      new Option("--retries <n>", "requeues of a task whose executor was lost (default 3)").argParser(wholeNumber(0)),
    )
    .addOption(
      new Option("--max-task-bytes <size>", "largest task input or common data (default 16m)").argParser(byteSize),
    )
    .addOption(
      new Option(
        "--max-request-bytes <size>",
        "largest batch of tasks or agent results in one request or stream message (default 64m)",
      ).argParser(byteSize),
    )
    .addOption(
      new Option(
        "--default-resreq <resources>",
        "resources for sessions that ask for none (default cpu=1,mem=1g)",
      ).argParser(resreqText),
    )
    .addOption(retentionOption())
    .addOption(nodeTokenOption("the credential agents are admitted with, and nothing else (needs --token)"))
    .addOption(nodeTokenFileOption())
    .addHelpText(
      "after",
      "\nThe global --token, when given, is required from every client (and from agents, unless\n" +
        "--node-token is set: then agents use that, and it admits nothing but the agent protocol).\n" +
        "The global --cache-endpoint is the object cache this control plane tells clients about,\n" +
        "so they find it without being told (kiln status shows it).\n" +
        "\nExample:\n  kiln server --host 0.0.0.0 --token $KILN_TOKEN --cache-endpoint http://10.0.0.5:7422\n",
    );
  addServerTlsOptions(server, { clientCa: true }).action(async (f: ServerFlags, cmd: Command) => {
    const { token, cacheEndpoint } = cmd.optsWithGlobals<GlobalOptions>();
    const tls = resolveServerTls(f, path.join(f.dataDir, "tls"), f.host);
    const { startControlPlane } = await import("../../control/server.js");
    boundHeapGrowth();
    await serveUntilSignal(
      "the control plane",
      () =>
        startControlPlane({
          dataDir: f.dataDir,
          store: f.store,
          host: f.host,
          port: f.port,
          token,
          nodeToken: nodeTokenOf(cmd),
          heartbeatTimeoutMs: f.heartbeatTimeout,
          drainTimeoutMs: f.drainTimeout,
          retries: f.retries,
          maxTaskBytes: f.maxTaskBytes,
          maxRequestBytes: f.maxRequestBytes,
          defaultResreq: f.defaultResreq,
          retentionMs: f.retention,
          ...(cacheEndpoint ? { cacheEndpoint } : {}),
          ...(tls ? { tls: tls.options } : {}),
        }),
      (cp) =>
        process.stdout.write(
          `Kiln control plane listening at ${cp.endpoint} (data: ${f.store === undefined ? f.dataDir : redactPassword(f.store)})\n` +
            trustLine(tls) +
            (cacheEndpoint ? `  object cache (told to clients): ${cacheEndpoint}\n` : "") +
            `Agents join with \`kiln agent --endpoint ${cp.endpoint}\`; try \`${kilnCommand(cp.endpoint, "list -n")}\`.\n`,
        ),
    );
  });

  program
    .command("agent")
    .description("run a node agent that gives this machine's executors to a control plane")
    .option("--name <name>", "node name (default: the hostname)")
    .addOption(executorsOption())
    .addOption(
      new Option("--cpus <n>", "cpus this node offers to the scheduler (default: the machine's)").argParser(
        wholeNumber(1, 4096),
      ),
    )
    .option("--work-dir <dir>", "where executors install applications and run")
    .addOption(maxPackageBytesOption())
    .addOption(maxPackageEntriesOption())
    .addOption(
      new Option(
        "--reconnect-max-delay <ms>",
        "longest wait between attempts to reach a lost control plane (default 2000)",
      ).argParser(wholeNumber(1)),
    )
    .addOption(nodeTokenOption("sent to the control plane and cache in place of --token"))
    .addOption(nodeTokenFileOption())
    .addHelpText(
      "after",
      "\nNeeds the global --endpoint (the control plane) and, if it has one, --node-token (or --token on a\n" +
        "cluster without a node token). Give it with --node-token-file (- for stdin): a token in this\n" +
        "process's environment or command line can be read by the service processes it starts.\n" +
        "For https:// endpoints: the global --tls-ca (also handed to service processes as KILN_TLS_CA), and\n" +
        "--tls-client-cert/--tls-client-key when the control plane requires client certificates.\n" +
        "cache:// package URLs are fetched from the global --cache-endpoint (default: the cache the control\n" +
        "plane advertises). A node name another live agent holds is refused: the agent exits 1.\n" +
        "\nExample:\n  kiln agent --endpoint http://10.0.0.5:7420 --node-token-file - --executors 8 < node-token\n",
    )
    .action(async (f: AgentFlags, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      const { endpoint } = globals;
      if (!endpoint) throw new UsageError("kiln agent needs --endpoint URL (the control plane to join)");
      warnIfTokenExposed(cmd, { token: "the cluster token", nodeToken: "the node token" });
      const nodeToken = nodeTokenOf(cmd);
      const token = nodeToken ?? globals.token;
      const { cacheEndpoint, cacheToken } = await resolveCacheConfig({ ...globals, ...(token ? { token } : {}) });
      const tls = agentTlsFiles(globals, endpoint);
      const { startAgent } = await import("../../agent/agent.js");
      await serveUntilSignal(
        "the agent",
        () =>
          startAgent({
            endpoint,
            token,
            name: f.name,
            executors: f.executors,
            cpus: f.cpus,
            workDir: f.workDir,
            maxPackageBytes: f.maxPackageBytes,
            maxPackageEntries: f.maxPackageEntries,
            reconnectMaxDelayMs: f.reconnectMaxDelay,
            cacheEndpoint,
            ...(cacheToken ? { cacheToken } : {}),
            tls,
          }),
        (agent) => process.stdout.write(`Kiln agent ${agent.nodeName} joined ${endpoint}\n`),
      );
    });
}

/** The agent's TLS files: the global flags, else KILN_TLS_* env, else the config context (as every client resolves them). */
function agentTlsFiles(globals: GlobalOptions, endpoint: string): TlsFiles {
  try {
    return loadConfig({
      endpoint,
      ...(globals.context ? { context: globals.context } : {}),
      ...(globals.config ? { configPath: globals.config } : {}),
      ...tlsFileOptions(globals),
    }).tls;
  } catch (err) {
    throw err instanceof InvalidArgumentError ? settingUsageError(err) : err;
  }
}
