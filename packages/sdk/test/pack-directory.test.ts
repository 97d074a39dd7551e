import assert from "node:assert/strict";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import { extract } from "tar";
import { packDirectory, packFile } from "../src/packaging/pack-directory.js";

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-pack-"));
  dirs.push(dir);
  return dir;
}
after(() => Promise.all(dirs.map((d) => fs.rm(d, { recursive: true, force: true }))));

async function project(): Promise<string> {
  const dir = await tempDir();
  await fs.mkdir(path.join(dir, "src"));
  await fs.mkdir(path.join(dir, "node_modules", "dep"), { recursive: true });
  await fs.mkdir(path.join(dir, "logs"));
  await fs.writeFile(path.join(dir, "package.json"), '{"name":"demo"}');
  await fs.writeFile(path.join(dir, "src", "main.js"), "console.log(1)");
  await fs.writeFile(path.join(dir, "run.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  await fs.writeFile(path.join(dir, "node_modules", "dep", "index.js"), "");
  await fs.writeFile(path.join(dir, "logs", "a.log"), "noise");
  await fs.writeFile(path.join(dir, "debug.log"), "noise");
  await fs.writeFile(path.join(dir, ".gitignore"), "*.log\nlogs/\n");
  return dir;
}

describe("packDirectory", () => {
  it("packs the same tree to the same bytes, whatever the file times", async () => {
    const dir = await project();
    const out = await tempDir();
    const first = await packDirectory(dir, path.join(out, "a.tgz"), { excludes: ["node_modules"] });
    const later = new Date(Date.now() + 3_600_000);
    await fs.utimes(path.join(dir, "src", "main.js"), later, later);
    const second = await packDirectory(dir, path.join(out, "b.tgz"), { excludes: ["node_modules"] });
    assert.equal(second.sha256, first.sha256);
    assert.deepEqual(await fs.readFile(first.file), await fs.readFile(second.file));
    assert.equal(first.size, (await fs.stat(first.file)).size);
  });

  it("changes the digest when a file's content changes", async () => {
    const dir = await project();
    const out = await tempDir();
    const before = await packDirectory(dir, path.join(out, "a.tgz"));
    await fs.writeFile(path.join(dir, "src", "main.js"), "console.log(2)");
    const after = await packDirectory(dir, path.join(out, "b.tgz"));
    assert.notEqual(after.sha256, before.sha256);
  });

  it("leaves out excluded and .gitignore'd files, and keeps modes", async () => {
    const dir = await project();
    const out = await tempDir();
    const pkg = await packDirectory(dir, path.join(out, "p.tgz"), { excludes: ["node_modules"] });
    assert.deepEqual(pkg.files, [".gitignore", "package.json", "run.sh", "src/main.js"]);
    const unpacked = await tempDir();
    await extract({ file: pkg.file, cwd: unpacked });
    assert.equal(await fs.readFile(path.join(unpacked, "src", "main.js"), "utf8"), "console.log(1)");
    assert.ok(((await fs.stat(path.join(unpacked, "run.sh"))).mode & 0o100) !== 0, "run.sh stays executable");
    const withoutGitignore = await packDirectory(dir, path.join(out, "q.tgz"), { useGitignore: false });
    assert.ok(
      withoutGitignore.files.includes("debug.log") && withoutGitignore.files.includes("node_modules/dep/index.js"),
    );
  });

  it("packs a single executable under its own name, keeping its mode", async () => {
    const dir = await project();
    const out = await tempDir();
    const pkg = await packFile(path.join(dir, "run.sh"), path.join(out, "run.tgz"));
    assert.deepEqual(pkg.files, ["run.sh"]);
    const unpacked = await tempDir();
    await extract({ file: pkg.file, cwd: unpacked });
    assert.deepEqual(await fs.readdir(unpacked), ["run.sh"]);
    assert.ok(((await fs.stat(path.join(unpacked, "run.sh"))).mode & 0o100) !== 0);
    await assert.rejects(packFile(dir, path.join(out, "x.tgz")), { message: /path: .* is not a file/ });
  });

  it("refuses a path that is not a directory, or one with nothing to pack", async () => {
    const dir = await project();
    const out = await tempDir();
    await assert.rejects(packDirectory(path.join(dir, "package.json"), path.join(out, "x.tgz")), {
      code: "INVALID_ARGUMENT",
      message: /path: .* is not a directory/,
    });
    await assert.rejects(packDirectory(dir, path.join(out, "y.tgz"), { excludes: ["*"] }), {
      message: /no files to package/,
    });
  });
});
