/**
 * `npm run bench:runner`: the Runner's overhead on a fresh `kiln up` on this
 * machine. Round-trip latency of a no-op remote call, one at a time (p50,
 * p99), and throughput of no-op calls from one client with all of them in
 * flight. A benchmark, not a test: it asserts nothing.
 * Latency is reported twice: for the first 2,000 sequential calls after
 * start, while V8 is still compiling the hot paths of all four processes,
 * and for the last 2,000 (steady state, what a long-running cluster sees).
 * BENCH_SEQUENTIAL (default 6000, at least 4000) and BENCH_CALLS (default
 * 30000) set the sizes.
 */
import { connect, Runner } from "@kiln/sdk";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { percentile } from "../packages/kiln/src/cli/ping-workload.js";

const CLI = path.resolve("packages/kiln/dist/cli/main.js");
const PROJECT = path.resolve("bench/runner-project");
const sequential = Math.max(4000, Number(process.env.BENCH_SEQUENTIAL ?? 6000));
const REPORTED = 2000;
const calls = Number(process.env.BENCH_CALLS ?? 30_000);
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-bench-runner-"));
const port = 18420 + Math.floor(Math.random() * 500) * 4;
const endpoint = `http://127.0.0.1:${port}`;
const cacheEndpoint = `http://127.0.0.1:${port + 2}`;

const up = spawn(process.execPath, [CLI, "up", "--data-dir", dataDir, "--port", String(port)], {
  stdio: ["ignore", "pipe", "pipe"],
});
let upLog = "";
up.stdout.on("data", (d: Buffer) => (upLog += d));
up.stderr.on("data", (d: Buffer) => (upLog += d));

async function waitForNode(): Promise<number> {
  const client = await connect({ endpoint });
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const nodes = await client.listNodes().catch(() => []);
      const cpus = nodes[0]?.status?.capacity?.cpu;
      if (cpus !== undefined) return Number(cpus);
      if (Date.now() > deadline) throw new Error(`kiln up did not become ready:\n${upLog}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    client.close();
  }
}

try {
  const executors = await waitForNode();
  const runner = await Runner.open("bench-runner", { project: PROJECT, endpoint, cacheEndpoint });
  try {
    const mod = runner.module<typeof import("./runner-project/src/noop.js")>("src/noop.ts");
    const noop = await runner.service(mod, "noop", { warmup: executors });
    // Warm up: executors bound, module loaded, connections open, JIT warm.
    await runner.get(Array.from({ length: 500 }, () => noop()));
    for (let i = 0; i < 200; i++) await noop();

    const latencies: number[] = [];
    for (let i = 0; i < sequential; i++) {
      const t = performance.now();
      await noop();
      latencies.push(performance.now() - t);
    }

    const started = performance.now();
    await runner.get(Array.from({ length: calls }, () => noop()));
    const seconds = (performance.now() - started) / 1000;

    console.log(
      `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "?"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`,
    );
    console.log(`executors: ${executors} (one node, kiln up defaults)`);
    const report = (label: string, sample: number[]) =>
      console.log(
        `no-op round trip, one call at a time, ${label}: p50 ${percentile(sample, 50).toFixed(2)} ms, ` +
          `p99 ${percentile(sample, 99).toFixed(2)} ms`,
      );
    report(`first ${REPORTED} calls`, latencies.slice(0, REPORTED));
    report(`calls ${sequential - REPORTED + 1}-${sequential} (steady state)`, latencies.slice(-REPORTED));
    console.log(
      `no-op calls, all in flight (${calls} calls): ${Math.round(calls / seconds).toLocaleString("en-US")} calls/s (${seconds.toFixed(2)} s)`,
    );
  } finally {
    await runner.close();
  }
} finally {
  if (up.exitCode === null && up.signalCode === null) {
    const exited = new Promise((r) => up.once("exit", r));
    up.kill("SIGTERM");
    const force = setTimeout(() => up.kill("SIGKILL"), 20_000);
    await exited;
    clearTimeout(force);
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
}
