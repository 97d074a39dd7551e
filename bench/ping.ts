/**
 * `npm run bench`: `kiln ping -p -t 30000` against a fresh `kiln up` on this
 * machine. Prints tasks/s, p50/p99 task latency and the peak RSS (VmHWM) of
 * every process of the cluster. A benchmark, not a test: it asserts nothing.
 *
 * `npm run bench -- --tls`: the same run without and with `kiln up --tls`,
 * alternately (BENCH_ROUNDS pairs, default 3), then each side's median and
 * the ratio, so the cost of TLS is measured on one build in one sitting.
 *
 * `npm run bench -- --store postgres`: the same run on the SQLite store and on `kiln up --store` with a
 * PostgreSQL server started for it in a temporary directory (packages/kiln/test/support/postgres.ts),
 * alternately, BENCH_ROUNDS pairs, then each side's median.
 */
import { spawn, execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { PingSummary } from "../packages/kiln/src/cli/ping-workload.js";
import { startTestPostgres, type TestPostgres } from "../packages/kiln/test/support/postgres.js";

const CLI = path.resolve("packages/kiln/dist/cli/main.js");
const tasks = Number(process.env.BENCH_TASKS ?? 30_000);
const compareTls = process.argv.includes("--tls");
const storeFlag = process.argv.indexOf("--store");
const compareStore = storeFlag >= 0 ? process.argv[storeFlag + 1] : undefined;
if (compareStore !== undefined && compareStore !== "postgres")
  throw new Error(`--store ${compareStore}: the benchmark compares SQLite with "postgres" only`);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);

function peakRss(pid: number): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}
const CLOCK_TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

function descendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number) => {
    let children: string[] = [];
    try {
      children = fs.readFileSync(`/proc/${p}/task/${p}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
    } catch {
      return;
    }
    for (const c of children) {
      out.push(Number(c));
      walk(Number(c));
    }
  };
  walk(pid);
  return out;
}

function describe(pid: number): string {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
    const script = cmd.find((a) => a.endsWith(".js")) ?? cmd[0] ?? "?";
    const sub = cmd[cmd.indexOf(script) + 1] ?? "";
    return `${path.basename(script)} ${sub}`.trim();
  } catch {
    return "?";
  }
}

/**
 * One fresh cluster (with TLS or without, on the SQLite store or on `store`) and one ping run against it;
 * prints the figures, returns the summary.
 */
async function benchOnce(tls: boolean, store?: string): Promise<PingSummary> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-bench-"));
  const port = 17420 + Math.floor(Math.random() * 500) * 2;
  const endpoint = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
  // kiln up --tls writes a config context: keep it away from the user's config.
  const configFile = path.join(dataDir, "config.yaml");
  fs.writeFileSync(configFile, "");
  const env = { ...process.env, KILN_CONFIG: configFile };
  const clientFlags = [
    "--endpoint",
    endpoint,
    ...(tls ? ["--tls-ca", path.join(dataDir, "data", "tls", "ca.pem")] : []),
  ];
  const up = spawn(
    process.execPath,
    [
      CLI,
      "up",
      "--data-dir",
      path.join(dataDir, "data"),
      "--port",
      String(port),
      ...(tls ? ["--tls"] : []),
      ...(store ? ["--store", store] : []),
    ],
    { stdio: ["ignore", "pipe", "pipe"], env },
  );
  let upLog = "";
  up.stdout.on("data", (d: Buffer) => (upLog += d));
  up.stderr.on("data", (d: Buffer) => (upLog += d));

  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const nodes = execFileSync(process.execPath, [CLI, "list", "-n", ...clientFlags], { stdio: "pipe", env });
        if (nodes.toString().includes("Ready")) break;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error(`kiln up did not become ready:\n${upLog}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // Peak RSS is sampled while the run is going: service processes exit when the cluster stops.
    // CPU time is taken at the first and last sample, so it counts the run, not the start-up.
    const peaks = new Map<number, { name: string; rss: number; cpuStart: number; cpuEnd: number }>();
    const sample = () => {
      for (const pid of [up.pid!, ...descendants(up.pid!)]) {
        const rss = peakRss(pid);
        const cpu = cpuSeconds(pid);
        if (rss === undefined || cpu === undefined) continue;
        const seen = peaks.get(pid);
        peaks.set(pid, {
          name: describe(pid),
          rss: Math.max(rss, seen?.rss ?? 0),
          cpuStart: seen?.cpuStart ?? cpu,
          cpuEnd: cpu,
        });
      }
    };
    sample();
    const sampler = setInterval(sample, 250);
    const ping = spawn(process.execPath, [CLI, "ping", "-p", "-t", String(tasks), "-o", "json", ...clientFlags], {
      stdio: ["ignore", "pipe", "inherit"],
      env,
    });
    let out = "";
    ping.stdout.on("data", (d: Buffer) => (out += d));
    const pingPeak = { rss: 0, cpu: 0 };
    const pingSampler = setInterval(() => {
      pingPeak.rss = Math.max(pingPeak.rss, peakRss(ping.pid!) ?? 0);
      pingPeak.cpu = cpuSeconds(ping.pid!) ?? pingPeak.cpu;
    }, 100);
    const code = await new Promise<number | null>((resolve) => ping.once("exit", resolve));
    clearInterval(sampler);
    clearInterval(pingSampler);
    sample();
    if (code !== 0) throw new Error(`kiln ping exited with ${code}:\n${out}`);
    const summary = JSON.parse(out) as PingSummary;
    const mb = (b: number) => `${(b / 1024 / 1024).toFixed(0)} MB`;
    console.log(`--- ${tls ? "TLS" : "cleartext"}, ${store ? "PostgreSQL" : "SQLite"} store ---`);
    console.log(
      `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, ${mb(os.totalmem())} RAM, Node ${process.version}`,
    );
    console.log(`tasks:        ${summary.succeeded}/${summary.tasks} succeeded, ${summary.failed} failed`);
    console.log(`duration:     ${summary.durationMs.toFixed(0)} ms`);
    console.log(`throughput:   ${summary.tasksPerSecond.toFixed(0)} tasks/s`);
    console.log(`latency:      p50 ${summary.latencyMs.p50.toFixed(1)} ms, p99 ${summary.latencyMs.p99.toFixed(1)} ms`);
    const cpu = (s: number) => `${s.toFixed(2).padStart(6)} s`;
    console.log(`peak RSS and CPU time during the run (client CPU includes its start-up):`);
    console.log(`  ${"kiln ping (client)".padEnd(36)} ${mb(pingPeak.rss).padStart(7)}  ${cpu(pingPeak.cpu)}`);
    for (const [pid, p] of peaks)
      console.log(`  ${`${p.name} [${pid}]`.padEnd(36)} ${mb(p.rss).padStart(7)}  ${cpu(p.cpuEnd - p.cpuStart)}`);
    return summary;
  } finally {
    up.kill("SIGTERM");
    const timer = setTimeout(() => up.kill("SIGKILL"), 20_000);
    await new Promise((r) => up.once("exit", r));
    clearTimeout(timer);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(", ");
if (compareStore) {
  const postgres: TestPostgres = await startTestPostgres();
  try {
    const sqlite: number[] = [];
    const pg: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      sqlite.push((await benchOnce(false)).tasksPerSecond);
      pg.push((await benchOnce(false, await postgres.createDatabase())).tasksPerSecond);
    }
    console.log(`=== ${rounds} alternations, ${tasks} tasks each ===`);
    console.log(`SQLite store:      ${show(sqlite)} tasks/s (median ${median(sqlite).toFixed(0)})`);
    console.log(`PostgreSQL store:  ${show(pg)} tasks/s (median ${median(pg).toFixed(0)})`);
  } finally {
    postgres.stop();
  }
} else if (!compareTls) {
  await benchOnce(false);
} else {
  const plain: number[] = [];
  const secure: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    plain.push((await benchOnce(false)).tasksPerSecond);
    secure.push((await benchOnce(true)).tasksPerSecond);
  }
  console.log(`=== ${rounds} alternations, ${tasks} tasks each ===`);
  console.log(`cleartext:  ${show(plain)} tasks/s (median ${median(plain).toFixed(0)})`);
  console.log(`TLS:        ${show(secure)} tasks/s (median ${median(secure).toFixed(0)})`);
  // Each pair ran back to back, so its ratio cancels what the machine was doing then; the median drops outliers.
  const ratios = plain.map((p, i) => secure[i]! / p);
  console.log(`TLS / cleartext per pair: ${ratios.map((r) => `${(r * 100).toFixed(1)}%`).join(", ")}`);
  console.log(`TLS / cleartext (median pair): ${(median(ratios) * 100).toFixed(1)}% of the throughput`);
}
