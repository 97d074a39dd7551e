/**
 * A real PostgreSQL server for tests and benchmarks, started in a temporary directory with the
 * machine's `initdb` and `pg_ctl` (Debian's `postgresql` package), on a free loopback port, with trust
 * authentication for local connections. As root, the server runs as the `postgres` user (PostgreSQL
 * refuses to run as root). Stop it with `stop()`; a process that exits without doing so stops it too.
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import pg from "pg";
import { holdPorts } from "./processes.js";

export interface TestPostgres {
  host: string;
  port: number;
  /** postgres://postgres@127.0.0.1:PORT/DATABASE */
  url(database: string): string;
  /** A new, empty database; its URL. */
  createDatabase(): Promise<string>;
  /** Stops the server at once (as a crash would) and removes its directory. */
  stop(): void;
}

const PG_CTL_TIMEOUT_S = 60;
const RUN_AS = "postgres";

/** The directory holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin. */
export function postgresBinDir(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter))
    if (dir && fs.existsSync(path.join(dir, "initdb")) && fs.existsSync(path.join(dir, "pg_ctl"))) return dir;
  const root = "/usr/lib/postgresql";
  const versions = fs.existsSync(root)
    ? fs
        .readdirSync(root)
        .filter((v) => fs.existsSync(path.join(root, v, "bin", "initdb")))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  return versions.length > 0 ? path.join(root, versions[0]!, "bin") : undefined;
}

/**
 * Why the PostgreSQL tests cannot run here, or undefined when they can. In CI (env CI set) a missing
 * PostgreSQL is an error, not a skip: .ci/run installs it, so its absence there is a broken setup.
 */
export function postgresMissing(): string | undefined {
  if (postgresBinDir() !== undefined) return undefined;
  const reason = "PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin)";
  if (process.env.CI) throw new Error(`${reason}: CI must install it (.ci/run installs Debian's postgresql)`);
  return `${reason}: install Debian's postgresql package to run the PostgreSQL store tests`;
}

const running = new Set<TestPostgres>();
process.on("exit", () => {
  for (const server of running) server.stop();
});

/** Starts a server; throws when PostgreSQL is not installed (check postgresMissing first). */
export async function startTestPostgres(): Promise<TestPostgres> {
  const bin = postgresBinDir();
  if (!bin) throw new Error(postgresMissing() ?? "PostgreSQL is not installed");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-pg-"));
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? userIds(RUN_AS) : undefined;
  if (owner) fs.chownSync(dir, owner.uid, owner.gid);
  const run = (tool: string, args: string[]) => {
    const command = asRoot ? "runuser" : path.join(bin, tool);
    const argv = asRoot ? ["-u", RUN_AS, "--", path.join(bin, tool), ...args] : args;
    return spawnSync(command, argv, { encoding: "utf8", timeout: (PG_CTL_TIMEOUT_S + 10) * 1000 });
  };
  const data = path.join(dir, "data");
  try {
    const init = run("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
    // A port that was free when picked may be taken before the server binds it: try another.
    for (let attempt = 1; ; attempt++) {
      const ports = await holdPorts(1);
      const port = ports.first;
      await ports.free(port);
      const log = path.join(dir, `server-${attempt}.log`);
      const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`;
      const start = run("pg_ctl", [
        "-D",
        data,
        "-w",
        "-t",
        String(PG_CTL_TIMEOUT_S),
        "-l",
        log,
        "-o",
        options,
        "start",
      ]);
      if (start.status === 0) return track(dir, data, port, run);
      const told = fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "";
      if (attempt >= 5 || !/could not (bind|create listen)/i.test(told))
        throw new Error(`pg_ctl start failed: ${start.stderr || start.stdout}\n${told}`);
    }
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

function track(
  dir: string,
  data: string,
  port: number,
  run: (tool: string, args: string[]) => ReturnType<typeof spawnSync>,
): TestPostgres {
  const host = "127.0.0.1";
  const url = (database: string) => `postgres://postgres@${host}:${port}/${database}`;
  let made = 0;
  const server: TestPostgres = {
    host,
    port,
    url,
    async createDatabase() {
      const name = `kiln_test_${++made}`;
      const admin = new pg.Client({ connectionString: url("postgres") });
      await admin.connect();
      try {
        await admin.query(`CREATE DATABASE ${name}`);
      } finally {
        await admin.end();
      }
      return url(name);
    },
    stop() {
      if (!running.delete(server)) return;
      run("pg_ctl", ["-D", data, "-m", "immediate", "-w", "-t", String(PG_CTL_TIMEOUT_S), "stop"]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  running.add(server);
  return server;
}

function userIds(user: string): { uid: number; gid: number } {
  const uid = Number(execFileSync("id", ["-u", user], { encoding: "utf8" }).trim());
  const gid = Number(execFileSync("id", ["-g", user], { encoding: "utf8" }).trim());
  return { uid, gid };
}
