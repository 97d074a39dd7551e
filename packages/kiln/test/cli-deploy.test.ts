import { connect, type KilnClient } from "@kiln/sdk";
import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { runCli, startKilnUp, type CliProcess } from "./cli-helpers.js";

// A single executable gets no node_modules, so it imports the service runtime by file URL.
const SERVICE_RUNTIME = pathToFileURL(
  path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../service/dist/index.js"),
).href;
// A Node project imports "@kiln/service" as the README shows: the node provides it.
const serviceSource = (version: string, runtime = "@kiln/service") =>
  `import { serve } from ${JSON.stringify(runtime)};\n` +
  `await serve({ onTaskInvoke: (t) => [${JSON.stringify(version)}, new TextDecoder().decode(t.input), ` +
  `process.env.KILN_CACHE_ENDPOINT].join("|") });\n`;

interface DeployJson {
  name: string;
  kind: string;
  installer: string;
  command: string;
  arguments: string[];
  key: string;
  url: string;
  sha256: string;
  uploaded: boolean;
  application: string;
}

describe("kiln deploy and kiln cache against kiln up", () => {
  let dir: string;
  let up: CliProcess | undefined;
  let endpoint: string;
  let cacheEndpoint: string;
  let client: KilnClient;
  const kiln = (...args: string[]) =>
    runCli([...args, "--endpoint", endpoint, "--cache-endpoint", cacheEndpoint], 60_000);

  async function nodeProject(version: string): Promise<string> {
    const project = await fs.mkdtemp(path.join(dir, "project-"));
    // The runtime is listed as `npm install <tarball>` writes it, at a path no node has: nodes provide it.
    const dependencies = { "@kiln/service": "file:../kiln/dist-packages/kiln-service-0.1.0.tgz" };
    await fs.writeFile(
      path.join(project, "package.json"),
      JSON.stringify({ name: "hello", bin: "service.mjs", dependencies }),
    );
    await fs.writeFile(path.join(project, "service.mjs"), serviceSource(version));
    await fs.mkdir(path.join(project, "node_modules", "junk"), { recursive: true });
    await fs.writeFile(path.join(project, "node_modules", "junk", "big.bin"), Buffer.alloc(1024 * 1024));
    return project;
  }

  async function runOnce(application: string, input: string): Promise<string[]> {
    const session = await client.createSession({ application });
    try {
      return new TextDecoder().decode(await session.run(input)).split("|");
    } finally {
      await session.close();
    }
  }

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-cli-deploy-"));
    ({ process: up, endpoint, cacheEndpoint } = await startKilnUp(path.join(dir, "data")));
    client = await connect({ endpoint });
  });

  after(async () => {
    client?.close();
    try {
      if (up) assert.equal(await up.stop(), 0, up.output());
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("deploys a Node project content-addressed, runs it, and runs new code after a redeploy", async () => {
    const project = await nodeProject("v1");
    const first = await kiln("deploy", project, "--name", "hello", "-o", "json");
    assert.equal(first.code, 0, first.stderr);
    const d1 = JSON.parse(first.stdout) as DeployJson;
    assert.equal(d1.kind, "node-project");
    assert.equal(d1.installer, "node");
    assert.deepEqual([d1.command, ...d1.arguments], ["node", "${KILN_APP_DIR}/service.mjs"]);
    assert.equal(d1.key, `hello/pkg/hello-${d1.sha256.slice(0, 16)}.tar.gz`);
    assert.equal(d1.url, `cache://${d1.key}#sha256=${d1.sha256}`);
    assert.deepEqual([d1.uploaded, d1.application], [true, "registered"]);
    const stat = await kiln("cache", "stat", d1.key, "-o", "json");
    assert.equal((JSON.parse(stat.stdout) as { sha256: string }).sha256, d1.sha256);
    assert.ok((JSON.parse(stat.stdout) as { size: number }).size < 10_000, "node_modules was not packed");

    const app = await client.getApplication("hello");
    assert.equal(app.spec?.url, d1.url);
    assert.deepEqual(await runOnce("hello", "a"), ["v1", "a", cacheEndpoint]);

    const again = JSON.parse((await kiln("deploy", project, "--name", "hello", "-o", "json")).stdout) as DeployJson;
    assert.deepEqual([again.sha256, again.uploaded, again.application], [d1.sha256, false, "updated"]);

    await fs.writeFile(path.join(project, "service.mjs"), serviceSource("v2"));
    const changed = JSON.parse((await kiln("deploy", project, "--name", "hello", "-o", "json")).stdout) as DeployJson;
    assert.notEqual(changed.sha256, d1.sha256);
    assert.equal(changed.uploaded, true);
    assert.deepEqual(await runOnce("hello", "b"), ["v2", "b", cacheEndpoint]);
  });

  it("deploys a single executable with the binary installer", async () => {
    const file = path.join(await fs.mkdtemp(path.join(dir, "exe-")), "svc.mjs");
    await fs.writeFile(file, `#!/usr/bin/env node\n${serviceSource("exe", SERVICE_RUNTIME)}`, { mode: 0o755 });
    const r = await kiln("deploy", file, "--name", "exe-app", "-o", "json");
    assert.equal(r.code, 0, r.stderr);
    const d = JSON.parse(r.stdout) as DeployJson;
    assert.deepEqual([d.kind, d.installer, d.command], ["executable", "binary", "${KILN_APP_DIR}/svc.mjs"]);
    assert.deepEqual((await runOnce("exe-app", "c")).slice(0, 2), ["exe", "c"]);
  });

  it("refuses a Node project with dependencies but no lockfile (exit 2), uploading and registering nothing", async () => {
    const project = await nodeProject("unlocked");
    const manifest = {
      name: "unlocked",
      bin: "service.mjs",
      dependencies: { "@kiln/service": "0.1.0", yaml: "^2.0.0" },
    };
    await fs.writeFile(path.join(project, "package.json"), JSON.stringify(manifest));
    const r = await kiln("deploy", project, "--name", "unlocked-app");
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /package\.json lists dependencies \(yaml\) but there is no package-lock\.json or npm-shrinkwrap\.json beside it: run npm install there/,
    );
    assert.equal((await kiln("cache", "ls", "unlocked-app", "-o", "json")).stdout.includes("unlocked-app/pkg"), false);
    assert.equal((await kiln("view", "-a", "unlocked-app")).code, 1, "the application was not registered");

    await fs.writeFile(path.join(project, "package-lock.json"), "{}");
    const locked = await kiln("deploy", project, "--name", "unlocked-app", "--dry-run");
    assert.equal(locked.code, 0, `with a lockfile it is deployed: ${locked.stderr}`);
  });

  it("--dry-run uploads and registers nothing", async () => {
    const project = await nodeProject("dry");
    const r = await kiln("deploy", project, "--name", "dry-app", "--dry-run");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Uploaded:\s+no \(dry run\)$/m);
    assert.match((await kiln("cache", "ls", "dry-app")).stdout.trim(), /^Key\s+Version/);
    assert.equal((await kiln("cache", "ls", "dry-app", "-o", "json")).stdout.includes("dry-app/pkg"), false);
    assert.equal((await kiln("view", "-a", "dry-app")).code, 1, "the application was not registered");
  });

  it("tells detection (2), API (1), unreachable (3) and upload (4) failures apart", async () => {
    const empty = await fs.mkdtemp(path.join(dir, "empty-"));
    await fs.writeFile(path.join(empty, "README"), "no code here");
    const noExecutable = await kiln("deploy", empty, "--name", "x");
    assert.equal(noExecutable.code, 2, noExecutable.stderr);
    assert.match(noExecutable.stderr, /no package\.json and no executable .* pass --command/);

    const missing = await kiln("deploy", path.join(dir, "nope"), "--name", "x");
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /does not exist/);

    const archive = path.join(dir, "app.tar.gz");
    await fs.writeFile(archive, Buffer.from([0x1f, 0x8b]));
    const noCommand = await kiln("deploy", archive, "--name", "x");
    assert.equal(noCommand.code, 2);
    assert.match(noCommand.stderr, /is an archive: pass --command/);

    const bare = await fs.mkdtemp(path.join(dir, "bare-"));
    await fs.writeFile(path.join(bare, "package.json"), '{"name":"bare"}');
    const noBin = await kiln("deploy", bare, "--name", "x");
    assert.equal(noBin.code, 2);
    assert.match(noBin.stderr, /neither "bin" nor "scripts.start"/);

    const project = await nodeProject("api");
    const refused = await kiln("deploy", project, "--name", "api-app", "--working-directory", "relative/dir");
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /working_directory/);

    const unreachable = await runCli(
      ["deploy", project, "--name", "api-app", "--endpoint", endpoint, "--cache-endpoint", "http://127.0.0.1:1"],
      30_000,
    );
    assert.equal(unreachable.code, 3, unreachable.stderr);
    assert.match(
      unreachable.stderr,
      /^error: cannot reach the object cache at http:\/\/127\.0\.0\.1:1\b.*--cache-endpoint/,
    );

    // A cache that answers but cannot keep the package (507, as a full cache does).
    const full = http.createServer((req, res) => {
      req.resume();
      req.once("end", () => {
        const [status, code] = req.method === "PUT" ? [507, "RESOURCE_EXHAUSTED"] : [404, "NOT_FOUND"];
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify({ code, message: status === 507 ? "the cache is full" : "not found" }));
      });
    });
    await new Promise<void>((resolve) => full.listen(0, "127.0.0.1", resolve));
    try {
      const fullCache = `http://127.0.0.1:${(full.address() as AddressInfo).port}`;
      const upload = await runCli(
        ["deploy", project, "--name", "api-app", "--endpoint", endpoint, "--cache-endpoint", fullCache],
        30_000,
      );
      assert.equal(upload.code, 4, upload.stderr);
      assert.match(upload.stderr, new RegExp(`^error: cannot upload the package to ${fullCache}: the cache is full`));
    } finally {
      await new Promise((resolve) => full.close(resolve));
    }
    assert.equal((await kiln("view", "-a", "api-app")).code, 1, "nothing was registered");
  });

  it("kiln cache put, get, ls, stat and rm", async () => {
    const file = path.join(dir, "greeting.txt");
    await fs.writeFile(file, "hello cache\n");
    const put = await kiln("cache", "put", "demo/s1/greeting", file, "-o", "json");
    assert.equal(put.code, 0, put.stderr);
    const ref = JSON.parse(put.stdout) as { endpoint: string; key: string; version: number; size: number };
    assert.deepEqual([ref.endpoint, ref.key, ref.version, ref.size], [cacheEndpoint, "demo/s1/greeting", 1, 12]);
    assert.match((await kiln("cache", "put", "demo/s1", file)).stdout, /^demo\/s1\/\S+ version 1, 12 bytes/);

    assert.equal((await kiln("cache", "get", "demo/s1/greeting")).stdout, "hello cache\n");
    const copy = path.join(dir, "copy.txt");
    assert.equal((await kiln("cache", "get", "demo/s1/greeting", "--to", copy)).code, 0);
    assert.equal(await fs.readFile(copy, "utf8"), "hello cache\n");

    const ls = await kiln("cache", "ls", "demo/s1");
    assert.equal(ls.stdout.trim().split("\n").length, 3, ls.stdout);
    assert.match(ls.stdout, /^demo\/s1\/greeting\s+1\s+12\s+0\s/m);
    assert.match((await kiln("cache", "stat", "demo/s1/greeting")).stdout, /^Version:\s+1 \(base 1, 0 deltas\)$/m);

    assert.match((await kiln("cache", "rm", "demo/*")).stdout, /^Deleted 2 objects\.$/m);
    const gone = await kiln("cache", "get", "demo/s1/greeting");
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /not found \(NOT_FOUND\)/);

    const traversal = await kiln("cache", "ls", "demo/../etc");
    assert.equal(traversal.code, 2);
    assert.match(traversal.stderr, /prefix: .*\.\./);
    const unreachable = await runCli(["cache", "ls", "demo", "--cache-endpoint", "http://127.0.0.1:1"]);
    assert.equal(unreachable.code, 3);
    assert.match(unreachable.stderr, /cannot reach the object cache at http:\/\/127\.0\.0\.1:1/);
  });
});
