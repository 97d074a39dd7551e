/**
 * `npm run bench:cache`: the object cache server as a child process (fs
 * backend, then memory backend), driven by one SDK client in this process.
 * Prints small-object put/s and get/s, large-file upload and download MB/s
 * on loopback, and the server's peak RSS (VmHWM) during a 2 GiB upload +
 * download. A benchmark, not a test: it asserts nothing.
 *
 * Knobs (env): BENCH_SMALL_OPS (default 50000), BENCH_CONCURRENCY (64),
 * BENCH_LARGE_MIB (1024), BENCH_RSS_MIB (2048), BENCH_BACKENDS ("fs,memory").
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { ObjectCache } from "@kiln/sdk";
import { type ObjectRef } from "@kiln/protocol";

const SMALL_OPS = Number(process.env.BENCH_SMALL_OPS ?? 50_000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const LARGE_MIB = Number(process.env.BENCH_LARGE_MIB ?? 1024);
const RSS_MIB = Number(process.env.BENCH_RSS_MIB ?? 2048);
const BACKENDS = (process.env.BENCH_BACKENDS ?? "fs,memory").split(",") as Backend[];
const SMALL_VALUE = randomBytes(92); // encodes to 100 bytes
const SERVER_MODULE = pathToFileURL(path.resolve("packages/kiln/dist/cache/server.js")).href;
const MIB = 1024 * 1024;

type Backend = "fs" | "memory";

interface ServerChild {
  child: ChildProcess;
  endpoint: string;
  stop(): Promise<void>;
}

/** The server runs in its own process so its RSS and CPU are its own. */
async function startServer(backend: Backend, dir: string): Promise<ServerChild> {
  const storage = backend === "fs" ? { kind: "fs", dir } : { kind: "memory", maxBytes: 256 * MIB, spillDir: dir };
  const script = `
    const { startCacheServer } = await import(${JSON.stringify(SERVER_MODULE)});
    const server = await startCacheServer({ port: 0, storage: ${JSON.stringify(storage)} });
    console.log(server.endpoint);
    process.once("SIGTERM", () => server.close().then(() => process.exit(0)));
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const endpoint = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("the cache server did not start within 30 s")), 30_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d;
      const line = out.split("\n")[0];
      if (out.includes("\n") && line) {
        clearTimeout(timer);
        resolve(line.trim());
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the cache server exited with ${code} before it was ready`));
    });
  });
  return {
    child,
    endpoint,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

function peakRss(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Runs `op(0..count-1)` with `CONCURRENCY` in flight; returns operations per second. */
async function rate(count: number, op: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) await op(next++);
    }),
  );
  return count / ((performance.now() - start) / 1000);
}

async function smallObjects(endpoint: string): Promise<string[]> {
  const writer = new ObjectCache({ endpoint });
  const reader = new ObjectCache({ endpoint, localCacheBytes: 0 });
  try {
    const refs: ObjectRef[] = new Array<ObjectRef>(SMALL_OPS);
    // Warm-up: JIT, sockets, server caches.
    await rate(2_000, (i) => writer.putObject(`warm/s/k${i}`, SMALL_VALUE));
    await rate(2_000, (i) => reader.getObject(`warm/s/k${i}`));
    const puts = await rate(SMALL_OPS, async (i) => (refs[i] = await writer.putObject(`bench/s/k${i}`, SMALL_VALUE)));
    const gets = await rate(SMALL_OPS, (i) => reader.getObject(refs[i]));
    const revalidated = await rate(SMALL_OPS, (i) => writer.getObject(refs[i]));
    return [
      `small objects (${refs[0].size} bytes, ${SMALL_OPS} ops, ${CONCURRENCY} in flight):`,
      `  put/s                ${puts.toFixed(0)}`,
      `  get/s                ${gets.toFixed(0)}   (no local copy: full reads)`,
      `  get/s revalidated    ${revalidated.toFixed(0)}   (local copy current: 304s)`,
    ];
  } finally {
    writer.close();
    reader.close();
  }
}

/** A file of `mib` MiB of random bytes (one random block repeated, so making it is quick). */
function makeFile(file: string, mib: number): void {
  const block = randomBytes(16 * MIB);
  const fd = fs.openSync(file, "w");
  try {
    for (let written = 0; written < mib * MIB; written += block.length)
      fs.writeSync(fd, block, 0, Math.min(block.length, mib * MIB - written));
  } finally {
    fs.closeSync(fd);
  }
}

async function transfer(endpoint: string, work: string, mib: number): Promise<{ up: number; down: number }> {
  const source = path.join(work, `source-${mib}.bin`);
  const target = path.join(work, `copy-${mib}.bin`);
  makeFile(source, mib);
  const cache = new ObjectCache({ endpoint });
  try {
    let start = performance.now();
    const ref = await cache.uploadObject(`bench/files/f${mib}`, source);
    const up = ref.size / 1e6 / ((performance.now() - start) / 1000);
    fs.rmSync(source);
    start = performance.now();
    await cache.downloadObject(ref, target);
    const down = ref.size / 1e6 / ((performance.now() - start) / 1000);
    fs.rmSync(target);
    await cache.deleteObjects(ref.key);
    return { up, down };
  } finally {
    cache.close();
    fs.rmSync(source, { force: true });
    fs.rmSync(target, { force: true });
  }
}

async function benchBackend(backend: Backend, work: string): Promise<void> {
  console.log(`\n== ${backend} backend`);
  const store = fs.mkdtempSync(path.join(work, `${backend}-`));
  let server = await startServer(backend, store);
  try {
    for (const line of await smallObjects(server.endpoint)) console.log(line);
    const { up, down } = await transfer(server.endpoint, work, LARGE_MIB);
    console.log(`large file (${LARGE_MIB} MiB): upload ${up.toFixed(0)} MB/s, download ${down.toFixed(0)} MB/s`);
  } finally {
    await server.stop();
  }
  // A fresh server, so its peak RSS is the large transfer's alone.
  fs.rmSync(store, { recursive: true, force: true });
  fs.mkdirSync(store);
  server = await startServer(backend, store);
  try {
    const idle = peakRss(server.child.pid!);
    const { up, down } = await transfer(server.endpoint, work, RSS_MIB);
    const peak = peakRss(server.child.pid!);
    console.log(
      `server peak RSS during a ${RSS_MIB} MiB upload + download: ${(peak / MIB).toFixed(0)} MiB ` +
        `(${(idle / MIB).toFixed(0)} MiB after start; upload ${up.toFixed(0)} MB/s, download ${down.toFixed(0)} MB/s)`,
    );
  } finally {
    await server.stop();
    fs.rmSync(store, { recursive: true, force: true });
  }
}

const cpus = os.cpus();
console.log(
  `machine: ${cpus.length} × ${cpus[0]?.model ?? "cpu"}, ${(os.totalmem() / MIB).toFixed(0)} MiB RAM, ` +
    `Node ${process.version}, load average ${os.loadavg()[0].toFixed(2)}`,
);
const work = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-bench-cache-"));
try {
  for (const backend of BACKENDS) await benchBackend(backend, work);
  console.log(`\nclient peak RSS: ${(peakRss(process.pid) / MIB).toFixed(0)} MiB`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
