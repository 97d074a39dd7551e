import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { connect, type KilnClient } from "@kiln/sdk";
import { flame, kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { after, before, describe, test } from "node:test";
import { startAgent, type Agent } from "../src/agent/agent.js";
import { BindError } from "../src/agent/bind-error.js";
import { installApplication, type InstallContext, type InstalledRelease } from "../src/agent/installer.js";
import { PROVIDED_PACKAGES, providedPackageDirs } from "../src/package-store/provided.js";
import {
  nodeAppFiles,
  PackageServer,
  sha256,
  SilentServer,
  tarGz,
  tarGzFiles,
  zip,
  type TarEntry,
} from "./support/agent-packages-fixtures.js";
import { startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";

type AppInit = MessageInitShape<typeof flame.ApplicationSpecSchema>;

const root = tempDir("packages");
after(() => fs.rmSync(root, { recursive: true, force: true }));

let workDirs = 0;

/** A fresh agent work dir, with the install logs it collects. */
function newNode(): { ctx: InstallContext; logs: string[]; releases: string; downloads: string } {
  const workDir = path.join(root, `node-${++workDirs}`);
  const logs: string[] = [];
  return {
    ctx: { workDir, log: (line) => logs.push(line) },
    logs,
    releases: path.join(workDir, "packages", "releases"),
    downloads: path.join(workDir, "packages", "downloads"),
  };
}

/** Writes `data` to a fresh file named `name` and returns its file:// URL. */
function fileUrl(name: string, data: Buffer | string): string {
  const dir = fs.mkdtempSync(path.join(root, "src-"));
  const file = path.join(dir, name);
  fs.writeFileSync(file, data);
  return pathToFileURL(file).href;
}

function install(init: AppInit, ctx: InstallContext): Promise<InstalledRelease | undefined> {
  return installApplication(create(flame.ApplicationSpecSchema, init), ctx);
}

async function installFails(init: AppInit, ctx: InstallContext, message: RegExp): Promise<string> {
  let text = "";
  await assert.rejects(install(init, ctx), (err: unknown) => {
    assert.ok(err instanceof BindError, `a BindError, got ${String(err)}`);
    assert.equal(err.code, kiln.BindFailure.INSTALL);
    assert.match(err.message, message);
    text = err.message;
    return true;
  });
  return text;
}

/** Nothing installed and no temp file left behind. */
function assertNothingInstalled(node: { releases: string; downloads: string }): void {
  assert.deepEqual(fs.readdirSync(node.releases), [], "no release (and no temp dir) left");
  assert.deepEqual(fs.readdirSync(node.downloads), [], "no download left");
}

describe("package downloads", () => {
  const server = new PackageServer((req, res) => {
    const p = new URL(req.url!, "http://x").pathname;
    if (p === "/redirect.tgz") {
      res.writeHead(302, { location: "/app.tgz" });
      res.end();
      return true;
    }
    if (!p.startsWith("/v1/objects/")) return false;
    // A stand-in for the object cache's GET route (docs: cache API contract).
    if (req.headers.authorization !== "Bearer cache-secret") {
      res.writeHead(401, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "UNAUTHENTICATED", message: "missing or wrong token" }));
      return true;
    }
    const body = server.files.get(p);
    if (!body) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "NOT_FOUND", message: `object ${p.slice(12)} not found` }));
      return true;
    }
    res.writeHead(200, { "kiln-format": p.endsWith("patched.tgz") ? "parts" : "raw", "kiln-version": "1" });
    res.end(body);
    return true;
  });
  let base = "";
  const app = tarGzFiles({ "run.sh": "#!/bin/sh\necho app\n", "data/x.txt": "x" }, ["run.sh"]);
  before(async () => {
    base = await server.start();
    server.files.set("/app.tgz", app);
    server.files.set("/v1/objects/demo/pkg/demo-1.tgz", app);
    server.files.set("/v1/objects/demo/pkg/patched.tgz", app);
  });
  after(() => server.close());

  test("file:// installs a tar.gz into releases/<sha256 of the content>", async () => {
    const node = newNode();
    const release = await install({ url: fileUrl("app.tar.gz", app) }, node.ctx);
    assert.equal(release?.dir, path.join(node.releases, sha256(app)));
    assert.equal(fs.readFileSync(path.join(release.dir, "data/x.txt"), "utf8"), "x");
    assert.ok(fs.statSync(path.join(release.dir, "run.sh")).mode & 0o100, "modes are kept");
    assert.equal(release.env.KILN_APP_DIR, release.dir);
    assert.deepEqual(fs.readdirSync(node.releases), [sha256(app)], "no temp dir left");
    assert.deepEqual(fs.readdirSync(node.downloads), []);
  });

  test("an application without a URL installs nothing", async () => {
    assert.equal(await install({ command: "/bin/true" }, newNode().ctx), undefined);
  });

  test("http:// downloads, follows a redirect, and names the URL and status on a 404 (without credentials)", async () => {
    const node = newNode();
    const release = await install({ url: `${base}/redirect.tgz` }, node.ctx);
    assert.equal(release?.dir, path.join(node.releases, sha256(app)));
    const message = await installFails(
      { url: `${base.replace("//", "//user:hunter2@")}/missing.tgz?signature=s3cret` },
      node.ctx,
      /cannot install package http:\/\/127\.0\.0\.1:\d+\/missing\.tgz\?…: HTTP 404 Not Found: NOT_FOUND: nothing at \/missing\.tgz/,
    );
    assert.ok(!message.includes("hunter2") && !message.includes("s3cret"), message);
  });

  test("cache://<key> GETs /v1/objects/<key> from the configured cache with its token", async () => {
    const node = newNode();
    const cache = { cacheEndpoint: base, cacheToken: "cache-secret" };
    const release = await install({ url: "cache://demo/pkg/demo-1.tgz" }, { ...node.ctx, ...cache });
    assert.equal(release?.dir, path.join(node.releases, sha256(app)));
    assert.equal(server.headersSeen.at(-1)?.authorization, "Bearer cache-secret");

    const failing = newNode();
    const ctx = { ...failing.ctx, ...cache };
    await installFails(
      { url: "cache://demo/pkg/demo-1.tgz" },
      { ...ctx, cacheToken: "wrong" },
      /HTTP 401 Unauthorized: UNAUTHENTICATED/,
    );
    await installFails({ url: "cache://demo/pkg/gone.tgz" }, ctx, /HTTP 404 .*object demo\/pkg\/gone\.tgz not found/);
    await installFails({ url: "cache://demo/pkg/patched.tgz" }, ctx, /has patches applied/);
    await installFails({ url: "cache://demo/../x" }, ctx, /key.*"\.\." must not start with/);
    await installFails({ url: "cache://demo/pkg" }, ctx, /three components/);
    await installFails({ url: "cache://demo/pkg/demo-1.tgz" }, failing.ctx, /cache endpoint.*none is set/);
    assertNothingInstalled(failing);
  });

  test("an unknown scheme, a missing file and a refused connection fail clearly", async () => {
    const node = newNode();
    await installFails({ url: "ftp://example.com/app.tgz" }, node.ctx, /unsupported URL scheme "ftp:"/);
    await installFails({ url: "app.tgz" }, node.ctx, /"app\.tgz" is not a URL/);
    await installFails(
      { url: "file:///nonexistent/kiln/app.tgz" },
      node.ctx,
      /no such file \/nonexistent\/kiln\/app\.tgz/,
    );
    await installFails({ url: "http://127.0.0.1:1/app.tgz" }, node.ctx, /ECONNREFUSED/);
    assertNothingInstalled(node);
  });

  test(
    "a host that accepts and never answers, or stalls mid-body, fails with a timeout",
    { timeout: 20_000 },
    async () => {
      const silent = new SilentServer();
      const stalling = new SilentServer("HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial");
      try {
        const node = newNode();
        const ctx = { ...node.ctx, connectTimeoutMs: 300 };
        await installFails(
          { url: `http://127.0.0.1:${await silent.start()}/app.tgz` },
          ctx,
          /timed out: no data from 127\.0\.0\.1:\d+ for 300 ms/,
        );
        const stallPort = await stalling.start();
        await installFails({ url: `http://127.0.0.1:${stallPort}/app.tgz` }, ctx, /timed out: no data .* for 300 ms/);
        await installFails(
          { url: `http://127.0.0.1:${stallPort}/app.tgz` },
          { ...node.ctx, connectTimeoutMs: 5_000, downloadTimeoutMs: 400 },
          /timed out: the download did not finish within 400 ms/,
        );
        assertNothingInstalled(node);
      } finally {
        await silent.close();
        await stalling.close();
      }
    },
  );
});

describe("package digests", () => {
  const server = new PackageServer();
  let base = "";
  const app = tarGzFiles({ "main.txt": "v1" });
  before(async () => {
    base = await server.start();
    server.files.set("/app.tgz", app);
  });
  after(() => server.close());

  test("a matching #sha256= or kiln.sha256 label installs", async () => {
    const node = newNode();
    const byUrl = await install({ url: `${base}/app.tgz#sha256=${sha256(app).toUpperCase()}` }, node.ctx);
    assert.equal(byUrl?.dir, path.join(node.releases, sha256(app)));
    const other = newNode();
    const byLabel = await install({ url: `${base}/app.tgz`, labels: [`kiln.sha256=${sha256(app)}`] }, other.ctx);
    assert.equal(byLabel?.dir, path.join(other.releases, sha256(app)));
  });

  test("a mismatch names both digests and installs nothing", async () => {
    const node = newNode();
    const wrong = "0".repeat(64);
    await installFails(
      { url: `${base}/app.tgz#sha256=${wrong}` },
      node.ctx,
      new RegExp(`sha256 mismatch: expected ${wrong}, the downloaded content has ${sha256(app)}`),
    );
    await installFails({ url: `${base}/app.tgz`, labels: [`kiln.sha256=${wrong}`] }, node.ctx, /sha256 mismatch/);
    assertNothingInstalled(node);
  });

  test("malformed or conflicting digests are refused before downloading", async () => {
    const node = newNode();
    const before = server.requests.get("/app.tgz") ?? 0;
    await installFails({ url: `${base}/app.tgz#sha256=abc` }, node.ctx, /URL digest "abc" is not a sha256 digest/);
    await installFails({ url: `${base}/app.tgz#md5=abc` }, node.ctx, /fragment "#md5=abc" is not supported/);
    await installFails(
      { url: `${base}/app.tgz#sha256=${sha256(app)}`, labels: [`kiln.sha256=${"1".repeat(64)}`] },
      node.ctx,
      /disagree/,
    );
    assert.equal(server.requests.get("/app.tgz") ?? 0, before, "nothing was downloaded");
  });

  test("a release named by the digest is reused without a download; without a digest it is downloaded and hashed again", async () => {
    const node = newNode();
    const url = `${base}/app.tgz`;
    await install({ url }, node.ctx);
    const count = () => server.requests.get("/app.tgz") ?? 0;
    const afterFirst = count();
    const reused = await install({ url: `${url}#sha256=${sha256(app)}` }, node.ctx);
    assert.equal(count(), afterFirst, "not downloaded again");
    assert.equal(reused?.dir, path.join(node.releases, sha256(app)));
    const again = await install({ url }, node.ctx);
    assert.equal(count(), afterFirst + 1, "downloaded again to learn its content");
    assert.equal(again?.dir, reused?.dir, "same content, same release");
  });
});

describe("archive entries that would escape the release", () => {
  const cases: [string, string, Buffer, RegExp][] = [
    [
      "tar-slip ../x",
      "app.tar.gz",
      tarGz([{ path: "../x", body: "x" }]),
      /entry "\.\.\/x" rejected: has a "\.\." component/,
    ],
    ["a nested ..", "app.tgz", tarGz([{ path: "a/../../x", body: "x" }]), /entry "a\/\.\.\/\.\.\/x" rejected/],
    [
      "an absolute entry",
      "app.tar.gz",
      tarGz([{ path: "/tmp/kiln-x", body: "x" }]),
      /entry "\/tmp\/kiln-x" rejected: absolute path/,
    ],
    [
      "a symlink out of the release",
      "app.tar.gz",
      tarGz([{ path: "etc", type: "SymbolicLink", linkpath: "../../../../etc" }]),
      /entry "etc" rejected: symlink to \.\.\/\.\.\/\.\.\/\.\.\/etc, outside the release/,
    ],
    [
      "an absolute symlink",
      "app.tar.gz",
      tarGz([{ path: "passwd", type: "SymbolicLink", linkpath: "/etc/passwd" }]),
      /entry "passwd" rejected: symlink to absolute path \/etc\/passwd/,
    ],
    [
      "a chain of symlinks that ends outside",
      "app.tar.gz",
      tarGz([
        { path: "here", type: "SymbolicLink", linkpath: "." },
        { path: "up", type: "SymbolicLink", linkpath: "here/.." },
      ]),
      /entry "up" rejected: symlink to here\/\.\. resolves outside the release/,
    ],
    [
      "a hard link out of the release",
      "app.tar.gz",
      tarGz([{ path: "h", type: "Link", linkpath: "../../x" }]),
      /entry "\.\.\/\.\.\/x" rejected: has a "\.\." component/,
    ],
    ["a FIFO", "app.tar.gz", tarGz([{ path: "pipe", type: "FIFO" }]), /entry "pipe" rejected: a FIFO entry/],
    [
      "a device",
      "app.tar.gz",
      tarGz([{ path: "dev/null", type: "CharacterDevice" }]),
      /entry "dev\/null" rejected: a CharacterDevice entry/,
    ],
    ["zip slip", "app.zip", zip([{ name: "../x", body: "x" }]), /entry "\.\.\/x" rejected: has a "\.\." component/],
    [
      "a zip with an absolute entry",
      "app.zip",
      zip([{ name: "/tmp/x", body: "x" }]),
      /entry "\/tmp\/x" rejected: absolute path/,
    ],
    [
      "a zip symlink out of the release",
      "app.zip",
      zip([{ name: "out", mode: 0o120777, body: "../../x" }]),
      /entry "out" rejected: symlink to \.\.\/\.\.\/x, outside the release/,
    ],
    [
      "a zip symlink under another symlink",
      "app.zip",
      zip([
        { name: "d", mode: 0o120777, body: "." },
        { name: "d/e", mode: 0o120777, body: "." },
      ]),
      /entry "d\/e" rejected: symlink inside symlink d/,
    ],
    ["a zip FIFO", "app.zip", zip([{ name: "pipe", mode: 0o010644 }]), /entry "pipe" rejected: file type/],
  ];
  for (const [name, file, data, message] of cases) {
    test(`${name} fails the install, naming the entry, and leaves nothing`, async () => {
      const node = newNode();
      const url = fileUrl(file, data);
      await installFails({ url }, node.ctx, message);
      assertNothingInstalled(node);
      const escaped = ["x", "kiln-x"].map((n) => path.join(node.releases, "..", n));
      for (const p of [...escaped, "/tmp/kiln-x"]) assert.ok(!fs.existsSync(p), `${p} was not written`);
    });
  }

  test("symlinks that stay inside the release are kept", async () => {
    const node = newNode();
    const data = tarGz([
      { path: "lib/real.js", body: "ok" },
      { path: "bin", type: "Directory" },
      { path: "bin/tool.js", type: "SymbolicLink", linkpath: "../lib/real.js" },
    ]);
    const release = await install({ url: fileUrl("app.tgz", data) }, node.ctx);
    assert.equal(fs.readFileSync(path.join(release!.dir, "bin/tool.js"), "utf8"), "ok");
  });

  test("a zip installs files, directories, modes and inner symlinks", async () => {
    const node = newNode();
    const data = zip([
      { name: "lib/", mode: 0o040755 },
      { name: "lib/a.txt", body: "a" },
      { name: "run", mode: 0o100755, body: "#!/bin/sh\necho zip-run\n" },
      { name: "link", mode: 0o120777, body: "lib/a.txt" },
    ]);
    const release = await install({ url: fileUrl("app.zip", data) }, node.ctx);
    assert.equal(fs.readFileSync(path.join(release!.dir, "link"), "utf8"), "a");
    assert.equal(execFileSync(path.join(release!.dir, "run"), { encoding: "utf8" }), "zip-run\n");
  });

  for (const [name, file, data, message] of [
    ["gzip magic then garbage", "app.tar.gz", Buffer.from([0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8]), /corrupt \.tar\.gz/],
    [
      "a truncated tar.gz",
      "app.tgz",
      tarGzFiles({ big: randomBytes(64 * 1024) }).subarray(0, 8000),
      /corrupt \.tar\.gz/,
    ],
    ["a .tgz that is not gzip", "app.tgz", Buffer.from("just text"), /corrupt \.tar\.gz: app\.tgz is not gzip data/],
    ["a .zip that is not a zip", "app.zip", Buffer.from("PK\x03\x04 nothing else"), /corrupt \.zip/],
  ] as const) {
    test(`a corrupt package (${name}) fails and leaves nothing`, async () => {
      const node = newNode();
      await installFails({ url: fileUrl(file, data) }, node.ctx, message);
      assertNothingInstalled(node);
    });
  }
});

describe("package limits (decompression bombs)", () => {
  const files = (n: number, size = 10) =>
    Object.fromEntries(Array.from({ length: n }, (_, i) => [`f${i}.txt`, "x".repeat(size)]));
  const zipFiles = (n: number, size = 10) =>
    zip(Array.from({ length: n }, (_, i) => ({ name: `f${i}.txt`, body: "x".repeat(size) })));
  const cases: [string, string, Buffer, Partial<InstallContext["limits"]>, RegExp][] = [
    [
      "a tar.gz with more entries than --max-package-entries",
      "app.tar.gz",
      tarGzFiles(files(6)),
      { maxEntries: 5 },
      /package has more than 5 entries \(--max-package-entries\); refused at "f5\.txt"/,
    ],
    [
      "a tar.gz that extracts past --max-package-bytes",
      "app.tar.gz",
      tarGzFiles(files(3, 400)),
      { maxBytes: 1000 },
      /package extracts to more than 1000 bytes \(--max-package-bytes\); refused at "f2\.txt"/,
    ],
    [
      "a zip with more entries than --max-package-entries",
      "app.zip",
      zipFiles(4),
      { maxEntries: 3 },
      /package has more than 3 entries \(--max-package-entries\); refused at "f3\.txt"/,
    ],
    [
      "a zip that extracts past --max-package-bytes",
      "app.zip",
      zipFiles(2, 600),
      { maxBytes: 1000 },
      /package extracts to more than 1000 bytes \(--max-package-bytes\); refused at "f1\.txt"/,
    ],
    [
      "a tar.gz of 65 MiB of zeros (about 1000:1)",
      "bomb.tar.gz",
      tarGzFiles({ "zeros.bin": Buffer.alloc(65 * 1024 * 1024) }),
      {},
      /package extracts to over 200 times its \d+ bytes \(compression ratio limit 200:1, a decompression bomb\?\); refused at "zeros\.bin"/,
    ],
  ];
  for (const [name, file, data, limits, message] of cases) {
    test(`${name} fails the install naming the limit, and leaves nothing`, async () => {
      const node = newNode();
      await installFails({ url: fileUrl(file, data) }, { ...node.ctx, limits }, message);
      assertNothingInstalled(node);
    });
  }

  test("a package within the limits installs", async () => {
    const node = newNode();
    const release = await install(
      { url: fileUrl("ok.tar.gz", tarGzFiles(files(5, 200))) },
      {
        ...node.ctx,
        limits: { maxEntries: 5, maxBytes: 1000 },
      },
    );
    assert.equal(fs.readdirSync(release!.dir).length, 5);
  });
});

describe("installers", () => {
  test('a single file is placed as <release>/<name>, executable, and "binary" puts it on PATH', async () => {
    const node = newNode();
    const data = "#!/bin/sh\necho single\n";
    const release = await install({ url: fileUrl("kiln-tool", data), installer: "binary" }, node.ctx);
    assert.equal(release?.dir, path.join(node.releases, sha256(data)));
    assert.equal(fs.statSync(path.join(release.dir, "kiln-tool")).mode & 0o777, 0o755);
    assert.ok(release.env.PATH!.startsWith(`${release.dir}/bin:${release.dir}:`));
    assert.equal(execFileSync("kiln-tool", { env: { ...process.env, ...release.env }, encoding: "utf8" }), "single\n");
  });

  test('"binary" makes bin/ executable and adds lib/ to LD_LIBRARY_PATH', async () => {
    const node = newNode();
    const data = tarGz([
      { path: "bin/hello", body: "#!/bin/sh\necho hello from bin\n", mode: 0o644 },
      { path: "lib/libx.so", body: "" },
    ] satisfies TarEntry[]);
    const release = await install({ url: fileUrl("tools.tgz", data), installer: "binary" }, node.ctx);
    const env = { ...process.env, ...release!.env };
    assert.equal(execFileSync("hello", { env, encoding: "utf8" }), "hello from bin\n");
    assert.ok(release!.env.LD_LIBRARY_PATH?.startsWith(path.join(release!.dir, "lib")));
  });

  test("an unknown installer is refused by name", async () => {
    await installFails(
      { url: fileUrl("a.tgz", tarGzFiles({ a: "a" })), installer: "pip" },
      newNode().ctx,
      /unknown installer "pip"/,
    );
  });
});

describe("node installer", () => {
  const server = new PackageServer();
  let base = "";
  const run = (release: InstalledRelease | undefined) =>
    execFileSync(process.execPath, ["index.js"], { cwd: release!.dir, encoding: "utf8" }).trim();
  const npmRuns = (logs: string[]) => logs.filter((l) => l.startsWith("running npm ci")).length;
  before(async () => (base = await server.start()));
  after(() => server.close());

  test("concurrent binds of one package: one download, one npm ci; then the dependency resolves", async () => {
    const node = newNode();
    server.files.set("/node-app.tgz", tarGzFiles(nodeAppFiles('console.log(require("greet")("v1"))')));
    // A slow download, so the second bind finds the first one in flight.
    server.delayMs = 300;
    try {
      const url = `${base}/node-app.tgz`;
      const [a, b] = await Promise.all([
        install({ url, installer: "node" }, node.ctx),
        install({ url, installer: "node" }, node.ctx),
      ]);
      assert.equal(server.requests.get("/node-app.tgz"), 1, "one download");
      assert.equal(npmRuns(node.logs), 1, `one npm ci: ${node.logs.join("\n")}`);
      assert.equal(a?.dir, b?.dir);
      assert.equal(run(a), "hello v1");
      assert.ok(a!.env.PATH!.startsWith(path.join(a!.dir, "node_modules", ".bin")));
    } finally {
      server.delayMs = 0;
    }
  });

  test("a redeploy with new code and the same lockfile: a new release, no npm ci, the new code runs", async () => {
    const node = newNode();
    const file = path.join(fs.mkdtempSync(path.join(root, "src-")), "app.tar.gz");
    const url = pathToFileURL(file).href;
    fs.writeFileSync(file, tarGzFiles(nodeAppFiles('console.log(require("greet")("first"))')));
    const first = await install({ url, installer: "node" }, node.ctx);
    assert.equal(run(first), "hello first");
    fs.writeFileSync(file, tarGzFiles(nodeAppFiles('console.log(require("greet")("second"))')));
    const second = await install({ url, installer: "node" }, node.ctx);
    assert.notEqual(second?.dir, first?.dir, "new content, new release");
    assert.equal(run(second), "hello second");
    assert.equal(run(first), "hello first", "the old release is untouched");
    assert.equal(npmRuns(node.logs), 1, "the unchanged lockfile installed nothing");
  });

  test("dependencies without a lockfile, or no package.json, are clear errors", async () => {
    const node = newNode();
    const { "package-lock.json": _lock, ...noLock } = nodeAppFiles("1");
    await installFails(
      { url: fileUrl("app.tgz", tarGzFiles(noLock)), installer: "node" },
      node.ctx,
      /lists dependencies but the package has no package-lock\.json/,
    );
    await installFails(
      { url: fileUrl("app.tgz", tarGzFiles({ "index.js": "1" })), installer: "node" },
      node.ctx,
      /needs a package\.json/,
    );
    const noDeps = await install(
      {
        url: fileUrl("app.tgz", tarGzFiles({ "package.json": "{}", "index.js": "console.log(42)" })),
        installer: "node",
      },
      node.ctx,
    );
    assert.equal(run(noDeps), "42");
    assert.equal(npmRuns(node.logs), 0);
  });

  describe("the Kiln packages come from the node, whatever the package says of them", () => {
    // Imports every provided package and prints where each resolved, then what `extra` prints.
    const probe = (extra: string) =>
      [
        ...PROVIDED_PACKAGES.map((name, i) => `import * as p${i} from "${name}";`),
        `const names = ${JSON.stringify(PROVIDED_PACKAGES)};`,
        `const loaded = [${PROVIDED_PACKAGES.map((_, i) => `p${i}`).join(", ")}].map((m) => Object.keys(m).length > 0);`,
        `console.log(JSON.stringify({ loaded, at: names.map((n) => import.meta.resolve(n)), extra: ${extra} }));`,
      ].join("\n");
    const runProbe = (release: InstalledRelease | undefined) =>
      JSON.parse(execFileSync(process.execPath, ["probe.mjs"], { cwd: release!.dir, encoding: "utf8" })) as {
        loaded: boolean[];
        at: string[];
        extra: unknown;
      };
    const assertProvided = (out: { loaded: boolean[]; at: string[] }) => {
      assert.deepEqual(out.loaded, [true, true, true], "every provided package loads");
      for (const [i, name] of PROVIDED_PACKAGES.entries())
        assert.ok(
          fs.realpathSync(fileURLToPath(out.at[i]!)).startsWith(providedPackageDirs().get(name)! + path.sep),
          `${name} is the agent's own (${out.at[i]})`,
        );
    };

    test("locked at specs no node can fetch, in every dependency field: not installed, the node's own resolve", async () => {
      const node = newNode();
      const files = nodeAppFiles("");
      const manifest = JSON.parse(files["package.json"] as string) as Record<string, Record<string, string>>;
      // As `npm install ../kiln/dist-packages/*.tgz` writes them: file: specs outside the project.
      manifest.dependencies!["@kiln/service"] = "file:../kiln/dist-packages/kiln-service-0.1.0.tgz";
      manifest.peerDependencies = { "@kiln/sdk": "0.1.0" };
      manifest.devDependencies = { "@kiln/protocol": "file:/nonexistent/kiln-protocol-0.1.0.tgz" };
      const lock = JSON.parse(files["package-lock.json"] as string) as {
        packages: Record<string, Record<string, unknown>>;
      };
      lock.packages[""] = { ...manifest, scripts: undefined };
      lock.packages["node_modules/@kiln/service"] = {
        version: "0.1.0",
        resolved: "file:../kiln/dist-packages/kiln-service-0.1.0.tgz",
        dependencies: { "only-kiln-needs-this": "1.0.0" },
      };
      lock.packages["node_modules/@kiln/sdk"] = { version: "0.1.0", peer: true };
      lock.packages["node_modules/@kiln/protocol"] = { version: "0.1.0", resolved: "file:/nonexistent.tgz", dev: true };
      lock.packages["node_modules/only-kiln-needs-this"] = { version: "1.0.0", resolved: "file:/nonexistent-dep.tgz" };
      files["package.json"] = JSON.stringify(manifest, null, 2);
      files["package-lock.json"] = JSON.stringify(lock, null, 2);
      files["probe.mjs"] = probe(`(await import("greet")).default("kiln")`);
      const release = await install({ url: fileUrl("app.tgz", tarGzFiles(files)), installer: "node" }, node.ctx);
      assert.equal(npmRuns(node.logs), 1, "npm ci ran for the package's own dependency");
      const out = runProbe(release);
      assertProvided(out);
      assert.equal(out.extra, "hello kiln", "the package's own dependency is installed");
      const installed = fs.readdirSync(path.join(release!.dir, "node_modules"));
      assert.ok(!installed.includes("only-kiln-needs-this"), `what only a Kiln package needed is not installed`);
    });

    test("a package whose only dependencies are Kiln packages needs no lockfile and runs no npm", async () => {
      const node = newNode();
      const manifest = { name: "svc", type: "module", dependencies: { "@kiln/service": "0.1.0", "@kiln/sdk": "*" } };
      const files = { "package.json": JSON.stringify(manifest), "probe.mjs": probe("null") };
      const first = await install({ url: fileUrl("a.tgz", tarGzFiles(files)), installer: "node" }, node.ctx);
      assertProvided(runProbe(first));
      const second = await install(
        { url: fileUrl("b.tgz", tarGzFiles({ ...files, "other.js": "" })), installer: "node" },
        node.ctx,
      );
      assertProvided(runProbe(second));
      assert.equal(npmRuns(node.logs), 0);
      assert.equal(
        fs.readlinkSync(path.join(first!.dir, "node_modules")),
        fs.readlinkSync(path.join(second!.dir, "node_modules")),
        "releases share one directory of links",
      );
    });
  });

  test("a failing npm ci reports its log tail; it is not remembered, so a later bind succeeds", async () => {
    const node = newNode();
    const depDir = fs.mkdtempSync(path.join(root, "dep-"));
    const dep = path.join(depDir, "greet-1.0.0.tgz");
    // A dependency npm has not cached: its content is new, and its file is not there yet.
    const files = nodeAppFiles(
      `console.log(require("greet")("fixed"))`,
      `file:${dep}`,
      `// ${randomBytes(8).toString("hex")}`,
    );
    const url = fileUrl("app.tgz", tarGzFiles(files));
    const message = await installFails({ url, installer: "node" }, node.ctx, /npm ci failed with exit code \d+/);
    assert.match(message, /log: .*\.log\); last lines:\n/);
    assert.match(message, /ENOENT|no such file/i, "the tail says what went wrong");
    assert.deepEqual(fs.readdirSync(path.join(node.ctx.workDir, "packages", "deps")), [], "no partial deps left");
    fs.writeFileSync(dep, files["vendor/greet-1.0.0.tgz"]!);
    const release = await install({ url, installer: "node" }, node.ctx);
    assert.equal(run(release), "hello fixed");
  });
});

describe("through a real agent and control plane", () => {
  let cp: TestControlPlane;
  let agent: Agent;
  let client: KilnClient;
  const agentLogs: string[] = [];
  const workDir = path.join(root, "agent");
  const tsxLoader = import.meta.resolve("tsx");
  const serveModule = pathToFileURL(
    path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../service/src/serve.ts"),
  ).href;
  const servicePackage = (version: string) =>
    tarGzFiles({
      "service.mts":
        `import { serve } from ${JSON.stringify(serveModule)};\n` +
        `await serve({ onTaskInvoke: () => [${JSON.stringify(version)}, process.cwd(), process.env.KILN_APP_DIR].join("|") });\n`,
    });

  before(async () => {
    cp = await startTestControlPlane({ bindRetryLimit: 2 });
    agent = await startAgent({ endpoint: cp.cp.endpoint, workDir, executors: 2, log: (l) => agentLogs.push(l) });
    client = await connect({ endpoint: cp.cp.endpoint });
  });
  after(async () => {
    client.close();
    await agent.close();
    await cp.close();
  });

  test("a file:// tar.gz binds and runs; a redeploy runs the new code from a new release", async () => {
    const file = path.join(fs.mkdtempSync(path.join(root, "src-")), "service.tar.gz");
    fs.writeFileSync(file, servicePackage("v1"));
    await client.registerApplication("pkg-app", {
      url: pathToFileURL(file).href,
      command: process.execPath,
      // `${KILN_APP_DIR}` in an argument is expanded from the release environment.
      arguments: ["--import", tsxLoader, "${KILN_APP_DIR}/service.mts"],
    });
    const first = await client.createSession({ application: "pkg-app" });
    const [version, cwd, appDir] = new TextDecoder().decode(await first.run("x")).split("|");
    assert.equal(version, "v1");
    assert.equal(cwd, path.join(workDir, "packages", "releases", sha256(fs.readFileSync(file))));
    assert.equal(appDir, cwd, "KILN_APP_DIR is the release, and the default working directory");
    await first.close();

    fs.writeFileSync(file, servicePackage("v2"));
    const second = await client.createSession({ application: "pkg-app" });
    const [version2, cwd2] = new TextDecoder().decode(await second.run("x")).split("|");
    assert.equal(version2, "v2");
    assert.notEqual(cwd2, cwd);
    await second.close();
  });

  test("a corrupt package fails the session's binds with code 10 events", async () => {
    await client.registerApplication("broken-pkg", {
      url: fileUrl("broken.tar.gz", Buffer.from([0x1f, 0x8b, 0, 0, 0])),
      command: process.execPath,
    });
    const session = await client.createSession({ application: "broken-pkg" });
    await assert.rejects(session.run("x"), /could not be bound/);
    const events = (await client.getSession(session.id)).status!.events;
    const installFailures = events.filter((e) => e.code === 1010);
    assert.ok(installFailures.length >= 1, events.map((e) => `${e.code} ${e.message}`).join("\n"));
    assert.match(installFailures[0]!.message ?? "", /cannot install package file:.*broken\.tar\.gz: corrupt \.tar\.gz/);
    await session.close();
  });
});
