import { connect, KilnError } from "@kiln/sdk";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import { startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";

const isRoot = process.getuid?.() === 0;

describe("the control plane on a full disk", { skip: isRoot ? false : "needs root to mount a small tmpfs" }, () => {
  const mount = tempDir("control-full-disk");
  let server: CliProcess | undefined;
  const startServer = async (): Promise<string> => {
    server = startCli(["server", "--port", "0", "--data-dir", path.join(mount, "control")]);
    return (await server.waitFor(/listening at (http:\/\/\S+)/, 30_000))[1]!;
  };
  after(async () => {
    await server?.stop();
    execFileSync("umount", [mount]);
  });

  it("refuses the write that does not fit with RESOURCE_EXHAUSTED, stops, and restarts with every acknowledged task", async () => {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", mount]);
    let endpoint = await startServer();
    let client = await connect({ endpoint });
    const session = await client.createSession({ application: "kiln-ping" });
    const input = "x".repeat(256 * 1024);
    let acknowledged = 0;
    let refusal: unknown;
    for (let i = 0; i < 64 && !refusal; i++) {
      try {
        acknowledged += (await session.createTasks([input])).length;
      } catch (err) {
        refusal = err;
      }
    }
    client.close();
    assert.ok(refusal instanceof KilnError, `a 4 MiB disk took ${acknowledged} tasks of 256 KiB: ${String(refusal)}`);
    assert.equal(refusal.code, "RESOURCE_EXHAUSTED", refusal.message);
    assert.match(refusal.message, /store is full \((SQLITE_FULL|ENOSPC)\): nothing of this request was stored/);
    assert.notEqual(await server!.exited(10_000), 0, "a control plane that cannot store stops");
    assert.match(server!.output(), /the control plane stopped: .*store is full/);

    execFileSync("mount", ["-o", "remount,size=64m", mount]);
    endpoint = await startServer();
    client = await connect({ endpoint });
    let tasks = 0;
    for await (const _task of client.session(session.id).listTasks()) tasks++;
    client.close();
    assert.equal(tasks, acknowledged, "exactly the acknowledged tasks were stored");
  });
});
