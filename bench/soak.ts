/**
 * `npm run bench:soak`: does the control plane's cost grow with what is running or with what ever
 * ran? Real `kiln server` and `kiln agent` processes (so the control plane's pid is known), driven
 * with the SDK the way `kiln ping` drives them; the control plane's RSS (VmRSS) is sampled every
 * second. A benchmark, not a test: it asserts nothing, but says for each goal whether it was met.
 *
 * Phases (`--phase NAME`, repeatable; all by default):
 * - churn: 2,000,000 no-op tasks through 400 sessions that open, run 5,000 tasks and close, two
 *   sessions in flight, server with `--retention 0`. Goals: peak RSS < 250 MB; flat (median of the
 *   last quarter of samples within 10% of the first quarter's; the first quarter includes the
 *   warm-up, so only a run of minutes says much); kiln.db + WAL < 100 MB at the end.
 * - one-session: 200,000 tasks in one session, all submitted at once. Goal: peak RSS < 250 MB.
 * - startup: 1,000,000 tasks run for real (4 sessions, default retention), the server stopped with
 *   SIGTERM, then the time from spawning `kiln server` on that data dir to its ready line and to a
 *   first answered API call. Goal: < 2 s.
 *
 * Sizes: `--scale F` multiplies every default size (`--scale 0.05` for a quick run); `--sessions`,
 * `--tasks-per-session`, `--in-flight`, `--one-session-tasks`, `--startup-tasks`,
 * `--startup-sessions` set one exactly (or SOAK_SESSIONS, SOAK_SCALE, ...). `--store URL` is passed
 * to every `kiln server`; the store-file figures are then left out, and since every phase then writes
 * to that one database, give each run (or each `--phase`) a fresh one.
 */
import { withTimeout } from "@kiln/protocol";
import { connect, type KilnClient } from "@kiln/sdk";
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { percentile, runPing } from "../packages/kiln/src/cli/ping-workload.js";

const CLI = path.resolve("packages/kiln/dist/cli/main.js");
const PHASES = ["churn", "one-session", "startup"] as const;
type Phase = (typeof PHASES)[number];

const SIZES = {
  sessions: 400,
  "tasks-per-session": 5_000,
  "in-flight": 2,
  "one-session-tasks": 200_000,
  "startup-tasks": 1_000_000,
  "startup-sessions": 4,
} as const;
type SizeName = keyof typeof SIZES;
/** Sizes that stay as they are under --scale: the shape of the workload, not its length. */
const UNSCALED: ReadonlySet<SizeName> = new Set(["tasks-per-session", "in-flight", "startup-sessions"]);

const { values: flags } = parseArgs({
  options: {
    phase: { type: "string", multiple: true },
    scale: { type: "string" },
    store: { type: "string" },
    help: { type: "boolean", short: "h" },
    ...Object.fromEntries(Object.keys(SIZES).map((name) => [name, { type: "string" as const }])),
  },
});
if (flags.help) {
  console.log(
    "usage: npm run bench:soak -- [--phase churn|one-session|startup]... [--scale F] [--store URL]\n" +
      `       [${Object.keys(SIZES)
        .map((n) => `--${n} N`)
        .join("] [")}]`,
  );
  process.exit(0);
}

const envName = (flag: string) => `SOAK_${flag.toUpperCase().replaceAll("-", "_")}`;
function positiveNumber(flag: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`--${flag} must be a positive number (got ${JSON.stringify(raw)})`);
  return n;
}
const scaleRaw = flags.scale ?? process.env[envName("scale")];
const scale = scaleRaw === undefined ? 1 : positiveNumber("scale", scaleRaw);
/** An exact flag or env value as given; otherwise the default, scaled unless it is part of the shape. */
function size(name: SizeName): number {
  const raw = (flags as Record<string, string | undefined>)[name] ?? process.env[envName(name)];
  if (raw !== undefined) return Math.round(positiveNumber(name, raw));
  return UNSCALED.has(name) ? SIZES[name] : Math.max(1, Math.round(SIZES[name] * scale));
}
const store = flags.store ?? process.env[envName("store")];
const phases: Phase[] = (flags.phase ?? [...PHASES]).map((p) => {
  if (!(PHASES as readonly string[]).includes(p))
    throw new Error(`--phase must be one of ${PHASES.join(", ")} (got ${p})`);
  return p as Phase;
});

const GOAL_RSS = 250 * 1024 * 1024;
const GOAL_STORE_BYTES = 100 * 1024 * 1024;
const GOAL_STARTUP_MS = 2_000;
const FLAT_TOLERANCE = 0.1;
const READY_TIMEOUT_MS = 10 * 60_000;
const STOP_TIMEOUT_MS = 120_000;
const NODE_TIMEOUT_MS = 30_000;
const STALL_TIMEOUT_MS = 120_000;

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`;
const goal = (what: string, met: boolean) => console.log(`  goal ${what}: ${met ? "met" : "missed"}`);

// --- processes --------------------------------------------------------------------------------

/** Every child still alive and every temp dir still there, so that any way out cleans them up. */
const live = new Set<Kiln>();
const tempDirs = new Set<string>();

/** A `kiln` CLI process in its own process group: stopping it stops whatever it started too. */
class Kiln {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  private log = "";
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly name: string,
    args: string[],
  ) {
    this.child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    live.add(this);
    const keep = (d: Buffer) => {
      // The tail is enough to explain a failure; a server that logs for hours must not fill this process.
      this.log = (this.log + d.toString()).slice(-64 * 1024);
      for (const w of this.waiters) w();
    };
    this.child.stdout!.on("data", keep);
    this.child.stderr!.on("data", keep);
    this.exited = new Promise((resolve) =>
      this.child.once("exit", (code) => {
        live.delete(this);
        for (const w of this.waiters) w();
        resolve(code);
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The first match of `pattern` in its output; rejects if it exits first or `ms` pass. */
  waitFor(pattern: RegExp, ms: number): Promise<RegExpMatchArray> {
    let check: () => void = () => {};
    const found = new Promise<RegExpMatchArray>((resolve, reject) => {
      check = () => {
        const m = pattern.exec(this.log);
        if (m) resolve(m);
        else if (this.child.exitCode !== null || this.child.signalCode !== null)
          reject(new Error(`${this.name} exited before printing ${pattern}:\n${this.log}`));
      };
      this.waiters.add(check);
      check();
    });
    return withTimeout(found, ms, `${this.name} to print ${pattern}`).finally(() => this.waiters.delete(check));
  }

  /** SIGTERM to the group, SIGKILL if it has not exited in time; then SIGKILL to any straggler of the group. */
  async stop(): Promise<number | null> {
    this.signalGroup("SIGTERM");
    const code = await withTimeout(this.exited, STOP_TIMEOUT_MS, `${this.name} to exit after SIGTERM`).catch(
      async (err: unknown) => {
        console.log(`  ${String(err)}; killing it`);
        this.signalGroup("SIGKILL");
        return withTimeout(this.exited, 10_000, `${this.name} to exit after SIGKILL`);
      },
    );
    this.signalGroup("SIGKILL");
    return code;
  }

  signalGroup(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      // The group is gone already.
    }
  }

  tail(): string {
    return this.log;
  }
}

function killEverything(): void {
  for (const k of live) k.signalGroup("SIGKILL");
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
}
process.on("exit", killEverything);
for (const signal of ["SIGINT", "SIGTERM"] as const)
  process.once(signal, () => {
    killEverything();
    process.exit(130);
  });

function tempDir(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kiln-soak-${label}-`));
  tempDirs.add(dir);
  return dir;
}

function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

interface Server {
  process: Kiln;
  endpoint: string;
  /** From spawn to the ready line. */
  readyMs: number;
}

async function startServer(dataDir: string, extra: string[] = []): Promise<Server> {
  const args = ["server", "--data-dir", dataDir, "--port", "0", ...(store ? ["--store", store] : []), ...extra];
  const started = performance.now();
  const server = new Kiln("kiln server", args);
  const [, endpoint] = await server.waitFor(/listening at (https?:\/\/\S+)/, READY_TIMEOUT_MS);
  return { process: server, endpoint: endpoint!, readyMs: performance.now() - started };
}

/** An agent with the default executors (one per CPU), once the control plane counts its node as ready. */
async function startAgent(client: KilnClient, workDir: string): Promise<Kiln> {
  const agent = new Kiln("kiln agent", [
    "agent",
    "--endpoint",
    client.endpoint,
    "--work-dir",
    workDir,
    "--name",
    "soak",
  ]);
  const deadline = Date.now() + NODE_TIMEOUT_MS;
  // Polled: the agent prints nothing once it has joined, and the control plane is the judge of "ready".
  while ((await client.clusterInfo()).readyNodes < 1) {
    if (agent.child.exitCode !== null) throw new Error(`kiln agent exited:\n${agent.tail()}`);
    if (Date.now() > deadline) throw new Error(`no ready node after ${NODE_TIMEOUT_MS} ms:\n${agent.tail()}`);
    await sleep(100);
  }
  return agent;
}

/** A server and an agent on a fresh data dir; `use` runs with a client; everything is stopped and removed after. */
async function withCluster<T>(
  label: string,
  serverArgs: string[],
  use: (c: { server: Server; client: KilnClient; dataDir: string }) => Promise<T>,
  keepDataDir?: string,
): Promise<T> {
  const root = keepDataDir ?? tempDir(label);
  const dataDir = path.join(root, "data");
  const server = await startServer(dataDir, serverArgs).catch((err: unknown) => {
    if (!keepDataDir) removeDir(root);
    throw err;
  });
  const client = await connect({ endpoint: server.endpoint });
  let agent: Kiln | undefined;
  try {
    agent = await startAgent(client, path.join(root, "work"));
    return await use({ server, client, dataDir });
  } finally {
    client.close();
    await agent?.stop();
    await server.process.stop();
    if (!keepDataDir) removeDir(root);
  }
}

// --- measuring --------------------------------------------------------------------------------

/** A `kB` field of /proc/<pid>/status in bytes: VmRSS (now) or VmHWM (the peak so far); undefined once it is gone. */
function statusBytes(pid: number, field: "VmRSS" | "VmHWM"): number | undefined {
  try {
    const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
const rssOf = (pid: number) => statusBytes(pid, "VmRSS");

/** The control plane's RSS once a second, from now until stop(). */
class RssSampler {
  readonly samples: number[] = [];
  private readonly timer: NodeJS.Timeout;
  /** The kernel's high-water mark at stop(): it also sees the peaks between two samples. */
  private highWater = 0;

  constructor(private readonly pid: number) {
    this.sample();
    this.timer = setInterval(() => this.sample(), 1000);
  }

  sample(): number | undefined {
    const rss = rssOf(this.pid);
    if (rss !== undefined) this.samples.push(rss);
    return rss;
  }

  stop(): void {
    clearInterval(this.timer);
    this.sample();
    this.highWater = statusBytes(this.pid, "VmHWM") ?? 0;
  }

  /** Since the process started: a phase starts its own server, so that is the phase's peak. */
  get peak(): number {
    return Math.max(this.highWater, ...this.samples);
  }

  get last(): number {
    return this.samples.at(-1) ?? 0;
  }

  /** Median of the first and of the last quarter of the samples. */
  quarters(): { first: number; last: number } {
    const q = Math.max(1, Math.floor(this.samples.length / 4));
    return { first: percentile(this.samples.slice(0, q), 50), last: percentile(this.samples.slice(-q), 50) };
  }
}

/** kiln.db and its -wal and -shm files, as they are now. */
function storeFiles(dataDir: string): { total: number; detail: string } {
  const parts = ["kiln.db", "kiln.db-wal", "kiln.db-shm"].map((name) => {
    const file = path.join(dataDir, name);
    return { name, bytes: fs.existsSync(file) ? fs.statSync(file).size : 0 };
  });
  return {
    total: parts.reduce((sum, p) => sum + p.bytes, 0),
    detail: parts.map((p) => `${p.name} ${mb(p.bytes)}`).join(", "),
  };
}

/**
 * `count` ping sessions of `tasksEach` tasks, `inFlight` at a time, each as `kiln ping` runs one
 * (open, submit all, wait, close); throws if a task did not succeed. Returns the wall time.
 */
async function runSessions(
  client: KilnClient,
  count: number,
  tasksEach: number,
  inFlight: number,
  progress: (done: number) => void,
): Promise<number> {
  let started = 0;
  let done = 0;
  const begin = performance.now();
  const worker = async () => {
    while (started < count) {
      started++;
      const { summary } = await runPing(client, { tasks: tasksEach, stallTimeoutMs: STALL_TIMEOUT_MS });
      if (summary.succeeded !== tasksEach)
        throw new Error(`session ${summary.session}: ${summary.succeeded}/${tasksEach} tasks succeeded`);
      progress(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
  return performance.now() - begin;
}

/** Calls `progress` at every tenth of `count` (and at the end). */
const everyTenth = (count: number, report: (done: number) => void) => (done: number) => {
  if (done === count || done % Math.max(1, Math.round(count / 10)) === 0) report(done);
};

// --- phases -----------------------------------------------------------------------------------

async function churn(): Promise<void> {
  const sessions = size("sessions");
  const perSession = size("tasks-per-session");
  const inFlight = size("in-flight");
  const total = sessions * perSession;
  console.log(
    `\n=== churn: ${total.toLocaleString("en")} tasks, ${sessions} sessions × ${perSession}, ${inFlight} in flight, --retention 0 ===`,
  );
  await withCluster("churn", ["--retention", "0"], async ({ server, client, dataDir }) => {
    const rss = new RssSampler(server.process.pid);
    let ms: number;
    try {
      ms = await runSessions(
        client,
        sessions,
        perSession,
        inFlight,
        everyTenth(sessions, (done) =>
          console.log(`  ${done}/${sessions} sessions, control plane RSS ${mb(rssOf(server.process.pid) ?? 0)}`),
        ),
      );
    } finally {
      rss.stop();
    }
    const { first, last } = rss.quarters();
    const flat = Math.abs(last - first) <= first * FLAT_TOLERANCE;
    console.log(`  throughput: ${((total / ms) * 1000).toFixed(0)} tasks/s (${(ms / 1000).toFixed(1)} s)`);
    console.log(`  control plane RSS: peak ${mb(rss.peak)}, final ${mb(rss.last)} (${rss.samples.length} samples)`);
    console.log(
      `  median RSS: first quarter ${mb(first)}, last quarter ${mb(last)} (${(((last - first) / first) * 100).toFixed(1)}%)`,
    );
    goal(`peak RSS < ${mb(GOAL_RSS)}`, rss.peak < GOAL_RSS);
    goal(`flat (last quarter within ${FLAT_TOLERANCE * 100}% of first)`, flat);
    if (store) {
      console.log(`  store ${store}: no store-file figures`);
      return;
    }
    const files = storeFiles(dataDir);
    console.log(`  store at the end: ${mb(files.total)} (${files.detail})`);
    goal(`kiln.db + WAL < ${mb(GOAL_STORE_BYTES)}`, files.total < GOAL_STORE_BYTES);
  });
}

async function oneSession(): Promise<void> {
  const tasks = size("one-session-tasks");
  console.log(`\n=== one-session: ${tasks.toLocaleString("en")} tasks in one session, all submitted at once ===`);
  await withCluster("one", [], async ({ server, client }) => {
    const rss = new RssSampler(server.process.pid);
    let finished = 0;
    let rssAllDone: number | undefined;
    try {
      const { summary } = await runPing(
        client,
        { tasks, stallTimeoutMs: STALL_TIMEOUT_MS },
        // Taken before runPing closes the session: the figure of a session still open.
        {
          onTaskDone: () => {
            if (++finished === tasks) rssAllDone = rss.sample();
          },
        },
      );
      console.log(
        `  ${summary.succeeded}/${tasks} succeeded, ${summary.tasksPerSecond.toFixed(0)} tasks/s, ` +
          `p50 ${summary.latencyMs.p50.toFixed(0)} ms`,
      );
    } finally {
      rss.stop();
    }
    console.log(
      `  control plane RSS: peak ${mb(rss.peak)}, with every task done and the session open ${mb(rssAllDone ?? 0)}, ` +
        `after it closed ${mb(rss.last)}`,
    );
    goal(`peak RSS < ${mb(GOAL_RSS)}`, rss.peak < GOAL_RSS);
  });
}

async function startup(): Promise<void> {
  const tasks = size("startup-tasks");
  const sessions = size("startup-sessions");
  const perSession = Math.ceil(tasks / sessions);
  console.log(
    `\n=== startup: a store of ${(perSession * sessions).toLocaleString("en")} finished tasks (${sessions} sessions), default retention ===`,
  );
  const root = tempDir("startup");
  try {
    await withCluster(
      "startup",
      [],
      async ({ client }) => {
        const ms = await runSessions(
          client,
          sessions,
          perSession,
          1,
          everyTenth(sessions, (done) => console.log(`  filling: ${done}/${sessions} sessions`)),
        );
        console.log(
          `  filled in ${(ms / 1000).toFixed(1)} s (${((perSession * sessions * 1000) / ms).toFixed(0)} tasks/s)`,
        );
      },
      root,
    );
    const dataDir = path.join(root, "data");
    if (!store) console.log(`  store after SIGTERM: ${mb(storeFiles(dataDir).total)} (${storeFiles(dataDir).detail})`);

    const spawned = performance.now();
    const server = await startServer(dataDir);
    try {
      const client = await connect({ endpoint: server.endpoint });
      try {
        // The first call that the control plane answers, listing included: "serving", not only "listening".
        const deadline = Date.now() + READY_TIMEOUT_MS;
        let listed: number | undefined;
        while (listed === undefined) {
          listed = await client
            .clusterInfo()
            .then(() => client.listSessions())
            .then((s) => s.length)
            .catch(async (err: unknown) => {
              if (Date.now() > deadline) throw err;
              await sleep(20);
              return undefined;
            });
        }
        const apiMs = performance.now() - spawned;
        console.log(`  spawn → ready line: ${server.readyMs.toFixed(0)} ms`);
        console.log(
          `  spawn → first answered GetClusterInfo + ListSession (${listed} sessions): ${apiMs.toFixed(0)} ms`,
        );
        console.log(`  control plane RSS after start: ${mb(rssOf(server.process.pid) ?? 0)}`);
        goal(`serving < ${GOAL_STARTUP_MS} ms`, apiMs < GOAL_STARTUP_MS);
      } finally {
        client.close();
      }
    } finally {
      await server.process.stop();
    }
  } finally {
    removeDir(root);
  }
}

const run: Record<Phase, () => Promise<void>> = { churn, "one-session": oneSession, startup };
console.log(
  `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, ${mb(os.totalmem())} RAM, Node ${process.version}` +
    (store ? `; store ${store}` : "; SQLite store") +
    (scale !== 1 ? `; scale ${scale}` : ""),
);
for (const phase of phases) {
  try {
    await run[phase]();
  } catch (err) {
    console.error(`phase ${phase} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  }
}
