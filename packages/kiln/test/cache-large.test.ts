import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { CacheServerOptions } from "../src/cache/server.js";
import { request } from "./support/cache-http.js";

/** 512 MiB keeps the suite fast; set KILN_TEST_LARGE_BYTES=2147483648 to measure a 2 GiB transfer by hand. */
const SIZE = Number(process.env.KILN_TEST_LARGE_BYTES ?? 512 * 1024 * 1024);
const RSS_LIMIT_KB = 150 * 1024;
const CHUNK = 1024 * 1024;
/** Built code, as users run it (like the CLI tests): a TypeScript loader alone would add ~35 MB to the process. */
const SERVER_MODULE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../dist/cache/server.js");
const SERVER_MAIN = `
  const { startCacheServer } = await import(process.argv[1]);
  const cache = await startCacheServer({ port: 0, storage: JSON.parse(process.argv[2]) });
  process.stdout.write(cache.endpoint + "\\n");
  process.once("SIGTERM", () => void cache.close().then(() => process.exit(0)));
`;

interface ServerProcess {
  child: ChildProcess;
  endpoint: string;
  /** Peak resident memory of the server process so far, in KiB. */
  peakRssKb(): number;
  stop(): Promise<void>;
}

const dirs: string[] = [];
const servers: ServerProcess[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-cache-large-"));
  dirs.push(d);
  return d;
}

async function startServerProcess(storage: CacheServerOptions["storage"]): Promise<ServerProcess> {
  const child = spawn(
    process.execPath,
    ["--input-type=module", "-e", SERVER_MAIN, SERVER_MODULE, JSON.stringify(storage)],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const endpoint = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the cache server process did not start within 30 s")), 30_000);
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d;
      if (out.includes("\n")) {
        clearTimeout(timer);
        resolve(out.split("\n")[0]!);
      }
    });
    child.once("exit", (code) => reject(new Error(`the cache server process exited with ${code}`)));
  });
  const server: ServerProcess = {
    child,
    endpoint,
    peakRssKb: () => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  servers.push(server);
  return server;
}

/** `size` bytes made on the fly (1 MiB chunks, each stamped with its index so order matters); hashes as it goes. */
function generated(size: number): { stream: Readable; sha256(): string } {
  const hash = createHash("sha256");
  const pattern = randomBytes(CHUNK);
  let sent = 0;
  let index = 0;
  const stream = new Readable({
    read() {
      if (sent >= size) return void this.push(null);
      const chunk = Buffer.from(pattern.subarray(0, Math.min(CHUNK, size - sent)));
      chunk.writeUInt32BE(index++ % 2 ** 32, 0);
      hash.update(chunk);
      sent += chunk.length;
      this.push(chunk);
    },
  });
  return { stream, sha256: () => hash.digest("hex") };
}

function upload(endpoint: string, key: string, size: number, chunked: boolean) {
  const body = generated(size);
  const url = new URL(`/v1/objects/${key}`, endpoint);
  return new Promise<{ status: number; ref: { sha256: string; size: number }; sent: string }>((resolve, reject) => {
    const req = http.request(url, { method: "PUT", headers: chunked ? {} : { "content-length": size } }, (res) => {
      let text = "";
      res.on("data", (d: Buffer) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode!, ref: JSON.parse(text), sent: body.sha256() }));
    });
    req.on("error", reject);
    pipeline(body.stream, req).catch(reject);
  });
}

async function downloadSha256(endpoint: string, key: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash("sha256");
  let bytes = 0;
  const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
    http.get(new URL(`/v1/objects/${key}`, endpoint), resolve).on("error", reject),
  );
  assert.equal(res.statusCode, 200);
  for await (const chunk of res as AsyncIterable<Buffer>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { sha256: hash.digest("hex"), bytes };
}

describe(`cache server: a ${SIZE / 2 ** 20} MiB object streams both ways in bounded memory`, () => {
  it("fs backend: upload, range read and download keep the server's peak RSS under 150 MB", async (t) => {
    const server = await startServerProcess({ kind: "fs", dir: tempDir() });
    const up = await upload(server.endpoint, "big/s/blob", SIZE, false);
    assert.equal(up.status, 201);
    assert.equal(up.ref.size, SIZE);
    assert.equal(up.ref.sha256, up.sent);

    const tailStart = SIZE - CHUNK;
    const tail = await request(server.endpoint, "GET", "/v1/objects/big/s/blob", {
      headers: { range: `bytes=${tailStart}-${tailStart + 9}` },
    });
    assert.equal(tail.status, 206);
    assert.equal(tail.body.readUInt32BE(0), SIZE / CHUNK - 1, "the range starts at the last chunk's stamp");

    const down = await downloadSha256(server.endpoint, "big/s/blob");
    assert.equal(down.bytes, SIZE);
    assert.equal(down.sha256, up.sent);
    const peak = server.peakRssKb();
    assert.ok(peak < RSS_LIMIT_KB, `server peak RSS ${Math.round(peak / 1024)} MB`);
    t.diagnostic(`fs backend, ${SIZE / 2 ** 20} MiB: server peak RSS ${Math.round(peak / 1024)} MB`);
  });

  it("memory backend: a chunked upload larger than maxBytes goes straight to spill, in bounded memory", async () => {
    const size = SIZE / 2;
    const spillDir = tempDir();
    const server = await startServerProcess({ kind: "memory", maxBytes: 8 * 1024 * 1024, spillDir });
    const up = await upload(server.endpoint, "big/s/spilled", size, true);
    assert.equal(up.status, 201);
    assert.equal(up.ref.sha256, up.sent);
    assert.equal(fs.readdirSync(path.join(spillDir, "blobs")).length, 1);
    const down = await downloadSha256(server.endpoint, "big/s/spilled");
    assert.equal(down.sha256, up.sent);
    const peak = server.peakRssKb();
    assert.ok(peak < RSS_LIMIT_KB, `server peak RSS ${Math.round(peak / 1024)} MB`);
  });
});

describe("cache server process: kill -9", () => {
  it("fs backend: every acknowledged write is served again by the next server on the dir", async () => {
    const dir = tempDir();
    let server = await startServerProcess({ kind: "fs", dir });
    const big = randomBytes(3 * CHUNK);
    const put = async (method: string, key: string, body: Buffer) => {
      const res = await request(server.endpoint, method, `/v1/objects/${key}`, { body });
      assert.ok(res.status < 300, res.body.toString());
    };
    // Many small writes at once (they share commits), then a large file and patches in order.
    await Promise.all(Array.from({ length: 200 }, (_, i) => put("PUT", `k/s/small${i}`, Buffer.from(`value ${i}`))));
    await put("PUT", "k/s/big", big);
    await put("PUT", "k/s/patched", Buffer.from("base"));
    await put("PATCH", "k/s/patched", randomBytes(100 * 1024));
    await put("PATCH", "k/s/patched", Buffer.from("last"));
    const acknowledged = new Map<string, string>();
    for (const key of [...Array.from({ length: 200 }, (_, i) => `k/s/small${i}`), "k/s/big", "k/s/patched"])
      acknowledged.set(
        key,
        String((await request(server.endpoint, "GET", `/v1/objects/${key}`)).headers["kiln-sha256"]),
      );

    server.child.kill("SIGKILL");
    await server.stop();
    server = await startServerProcess({ kind: "fs", dir });
    for (const [key, sha] of acknowledged) {
      const got = await request(server.endpoint, "GET", `/v1/objects/${key}`);
      assert.equal(got.status, 200, key);
      assert.equal(got.headers["kiln-sha256"], sha, key);
    }
    const big2 = await request(server.endpoint, "GET", "/v1/objects/k/s/big");
    assert.ok(big2.body.equals(big));
  });
});
