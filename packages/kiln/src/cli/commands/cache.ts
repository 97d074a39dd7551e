import { formatBytes } from "@kiln/protocol";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { Option, type Command } from "commander";
import { withCache } from "../cache-client.js";
import { UsageError } from "../exit-codes.js";
import { formatDateTime } from "../format.js";
import { printJson } from "../json.js";
import { byteSize, outputOption, wholeNumber, type GlobalOptions } from "../options.js";
import { nodeTokenFileOption, nodeTokenOf, nodeTokenOption } from "../secrets.js";
import { addServerTlsOptions, resolveServerTls, type ServerTlsFlags } from "../server-tls.js";
import { serveUntilSignal } from "../signals.js";
import { renderFields, renderTable } from "../table.js";

const DEFAULT_CACHE_DIR = path.join(os.homedir(), ".kiln", "data", "cache");

interface CacheServerFlags extends ServerTlsFlags {
  host: string;
  port: number;
  storage: "fs" | "memory";
  dataDir: string;
  maxMemory: number;
  maxSpill?: number;
  advertise?: string;
}

/** Adds `kiln cache` (the object cache server) and its client subcommands. */
export function registerCacheCommands(program: Command): void {
  const cache = program
    .command("cache")
    .description("run the object cache (with no subcommand), or put/get/list/remove/stat objects in it")
    .option("--host <address>", "address to listen on; beyond loopback a --token is required", "127.0.0.1")
    .addOption(
      new Option("--port <n>", "port to listen on (0 picks a free one)").argParser(wholeNumber(0, 65535)).default(7422),
    )
    .addOption(
      new Option("--storage <kind>", "fs: files that survive restarts; memory: LRU in memory, spilling to disk")
        .choices(["fs", "memory"])
        .default("fs"),
    )
    .option("--data-dir <dir>", "fs: where objects live; memory: where evicted objects spill", DEFAULT_CACHE_DIR)
    .addOption(
      new Option("--max-memory <size>", "memory: bytes kept in memory before spilling (e.g. 512m)")
        .argParser(byteSize)
        .default(512 * 1024 * 1024, "512m"),
    )
    .addOption(
      new Option(
        "--max-spill <size>",
        "memory: bytes allowed on disk; writes beyond fail (default: no limit)",
      ).argParser(byteSize),
    )
    .option("--advertise <url>", "endpoint written into object refs (default: http://<host>:<port>)")
    .addOption(nodeTokenOption("agents' credential here, for reading packages and objects only (needs --token)"))
    .addOption(nodeTokenFileOption());
  addServerTlsOptions(cache, { clientCa: true })
    .addHelpText(
      "after",
      "\nThe global --token, when given, is required from every client; the same token lets the cache\n" +
        "check the task credentials the control plane mints (a service process may use its own\n" +
        "application's keys only).\n" +
        "\nExamples:\n  kiln cache --data-dir /var/lib/kiln/cache\n  kiln cache --storage memory --max-memory 2g\n",
    )
    .action(async (f: CacheServerFlags, cmd: Command) => {
      const { token } = cmd.optsWithGlobals<GlobalOptions>();
      const tls = resolveServerTls(f, path.join(f.dataDir, "tls"), f.host);
      const { startCacheServer } = await import("../../cache/server.js");
      const storage =
        f.storage === "fs"
          ? { kind: "fs" as const, dir: f.dataDir }
          : {
              kind: "memory" as const,
              maxBytes: f.maxMemory,
              spillDir: f.dataDir,
              ...(f.maxSpill !== undefined ? { maxSpillBytes: f.maxSpill } : {}),
            };
      await serveUntilSignal(
        "the object cache",
        () =>
          startCacheServer({
            host: f.host,
            port: f.port,
            storage,
            ...(token ? { token } : {}),
            nodeToken: nodeTokenOf(cmd),
            ...(tls ? { tls: tls.options } : {}),
            ...(f.advertise ? { advertiseEndpoint: f.advertise } : {}),
            log: (line) => process.stderr.write(`${new Date().toISOString()} cache: ${line}\n`),
          }),
        (server) =>
          process.stdout.write(
            `Kiln object cache listening at ${server.endpoint} (${f.storage}: ${f.dataDir})\n` +
              (tls?.localCa ? `  TLS: clients trust ${tls.localCa.file} (--tls-ca or KILN_TLS_CA)\n` : ""),
          ),
      );
    });
  registerCacheClientCommands(cache);
}

/** `kiln cache put|get|ls|rm|stat`: any HTTP client can do these; these print what people want to see. */
function registerCacheClientCommands(cache: Command): void {
  cache
    .command("put")
    .description("upload a file (raw bytes) to a key app/session/id, or to app/session for a new id")
    .argument("<key-or-prefix>", "app/session/id, or app/session")
    .argument("<file>", "the file to upload")
    .addOption(outputOption())
    .action((keyOrPrefix: string, file: string, f: { output: string }, cmd: Command) =>
      withCache(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const ref = await client.uploadObject(keyOrPrefix, await readableFile(file));
        if (f.output === "json") printJson({ ...ref.toJSON() });
        else process.stdout.write(`${ref.key} version ${ref.version}, ${ref.size} bytes, sha256 ${ref.sha256}\n`);
      }),
    );

  cache
    .command("get")
    .description("download an object's bytes to a file (--to) or to stdout, checking its sha256")
    .argument("<key>", "app/session/id")
    .option("--to <file>", "write here (atomically) instead of stdout")
    .action((key: string, f: { to?: string }, cmd: Command) =>
      withCache(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        if (f.to) {
          await client.downloadObject(key, f.to);
          return;
        }
        // Checked before a byte reaches stdout: download to a temp file first.
        const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), "kiln-cache-get-"));
        try {
          const file = path.join(dir, "object");
          await client.downloadObject(key, file);
          await pipeline(fs.createReadStream(file), process.stdout, { end: false });
        } finally {
          await fs.promises.rm(dir, { recursive: true, force: true });
        }
      }),
    );

  cache
    .command("ls")
    .description("list the objects of an application or a session")
    .argument("<prefix>", "app or app/session")
    .addOption(outputOption())
    .action((prefix: string, f: { output: string }, cmd: Command) =>
      withCache(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const objects = await client.listObjects(prefix);
        if (f.output === "json") {
          printJson({ objects: objects.map((o) => ({ ...o })) });
          return;
        }
        process.stdout.write(
          renderTable(
            ["Key", "Version", "Size", "Deltas", "Updated", "SHA256"],
            objects.map((o) => [
              o.key,
              String(o.version),
              formatBytes(o.size),
              String(o.deltas),
              formatDateTime(o.updatedAt),
              o.sha256.slice(0, 16),
            ]),
          ),
        );
      }),
    );

  cache
    .command("rm")
    .description("delete a key, every object of app/session, or every object of an application (app/*)")
    .argument("<key-or-prefix>", "app/session/id, app/session, or app/*")
    .action((target: string, _f: unknown, cmd: Command) =>
      withCache(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const deleted = await client.deleteObjects(target);
        process.stdout.write(`Deleted ${deleted} object${deleted === 1 ? "" : "s"}.\n`);
      }),
    );

  cache
    .command("stat")
    .description("show an object's version, size, sha256 and deltas")
    .argument("<key>", "app/session/id")
    .addOption(outputOption())
    .action((key: string, f: { output: string }, cmd: Command) =>
      withCache(cmd.optsWithGlobals<GlobalOptions>(), async (client) => {
        const stat = await client.statObject(key);
        if (f.output === "json") {
          printJson({ ...stat });
          return;
        }
        process.stdout.write(
          renderFields([
            ["Key", stat.key],
            ["Version", `${stat.version} (base ${stat.baseVersion}, ${stat.deltas} deltas)`],
            ["Size", `${formatBytes(stat.size)} (${stat.size} bytes)`],
            ["SHA256", stat.sha256],
            ["Created", formatDateTime(stat.createdAt)],
            ["Updated", formatDateTime(stat.updatedAt)],
          ]),
        );
      }),
    );
}

/** A usage error (exit 2) rather than an upload failure when the file is not there. */
async function readableFile(file: string): Promise<string> {
  const stat = await fs.promises.stat(file).catch(() => undefined);
  if (!stat?.isFile()) throw new UsageError(`${file} is not a readable file`);
  return file;
}
