import { connect, type KilnClient } from "@kiln/sdk";
import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { startAgent, type Agent } from "../src/agent/agent.js";
import { resolveBuiltinCommand, serviceEntry } from "../src/apps/service-entry.js";
import { CLI_ENV } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";
import { parsePing } from "./support/ping-app.js";

const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const REPO_NODE_MODULES = path.resolve(PACKAGE_ROOT, "../../node_modules");

/**
 * A second install of the kiln package elsewhere on disk (its dist, bin and package.json, with the
 * same dependencies), as another host would have one.
 */
function copyInstall(): string {
  const root = tempDir("other-install");
  const kiln = path.join(root, "kiln");
  fs.mkdirSync(kiln);
  for (const entry of ["dist", "bin", "package.json"])
    fs.cpSync(path.join(PACKAGE_ROOT, entry), path.join(kiln, entry), { recursive: true });
  fs.symlinkSync(REPO_NODE_MODULES, path.join(root, "node_modules"));
  if (fs.existsSync(path.join(PACKAGE_ROOT, "node_modules")))
    fs.symlinkSync(path.join(PACKAGE_ROOT, "node_modules"), path.join(kiln, "node_modules"));
  return kiln;
}

describe("built-in applications run from each node's own install", () => {
  let server: ReturnType<typeof spawn>;
  let agent: Agent;
  let client: KilnClient;
  let otherInstall: string;

  before(async () => {
    otherInstall = copyInstall();
    server = spawn(
      process.execPath,
      [path.join(otherInstall, "dist/cli/main.js"), "server", "--data-dir", tempDir("cp"), "--port", "0"],
      { env: CLI_ENV, stdio: ["ignore", "pipe", "pipe"] },
    );
    const endpoint = await new Promise<string>((resolve, reject) => {
      let output = "";
      const timer = setTimeout(() => reject(new Error(`kiln server not up in 30 s:\n${output}`)), 30_000);
      const onData = (d: Buffer) => {
        output += d.toString();
        const m = /listening at (http:\/\/\S+)/.exec(output);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      };
      server.stdout!.on("data", onData);
      server.stderr!.on("data", onData);
      server.once("exit", () => reject(new Error(`kiln server exited:\n${output}`)));
    });
    // The control plane's install is gone for the agent: only its own can serve the built-ins.
    fs.rmSync(path.join(otherInstall, "dist", "apps"), { recursive: true });
    agent = await startAgent({ endpoint, executors: 1, workDir: tempDir("agent"), log: () => {} });
    client = await connect({ endpoint });
  });

  after(async () => {
    client?.close();
    await agent?.close();
    if (server && server.exitCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.kill("SIGTERM");
      await exited;
    }
  });

  it("registers kiln-ping with a symbolic command, not the control plane's paths", async () => {
    const spec = (await client.getApplication("kiln-ping")).spec!;
    assert.equal(spec.command, "kiln:builtin/ping");
    assert.deepEqual(spec.arguments, []);
  });

  it("runs ping tasks on an agent whose Kiln lives elsewhere than the control plane's", async () => {
    const session = await client.createSession({ application: "kiln-ping" });
    const outputs = await Promise.all(Array.from({ length: 50 }, () => session.run()));
    assert.equal(outputs.length, 50);
    for (const out of outputs) assert.ok(parsePing(out).pid > 0);
    await session.close();
  });
});

describe("resolveBuiltinCommand", () => {
  it("turns a built-in command into this process's node and this install's entry, keeping arguments", () => {
    assert.deepEqual(resolveBuiltinCommand("kiln:builtin/exec", ["--flag"]), {
      command: process.execPath,
      args: [serviceEntry("exec"), "--flag"],
    });
  });

  it("leaves any other command as it is", () => {
    assert.deepEqual(resolveBuiltinCommand("python3", ["svc.py"]), { command: "python3", args: ["svc.py"] });
  });

  it("refuses a built-in this version does not have, naming the ones it has", () => {
    assert.throws(
      () => resolveBuiltinCommand("kiln:builtin/nope", []),
      /no built-in service "nope" \(it has ping, run, exec\)/,
    );
  });
});
