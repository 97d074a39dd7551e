import { connect, type KilnClient } from "@kiln/sdk";
import { flame } from "@kiln/sdk/proto";
import assert from "node:assert/strict";
import * as os from "node:os";
import { after, before, describe, it } from "node:test";
import { parsePing } from "./support/ping-app.js";
import { tempDir } from "./support/control-plane.js";
import { freePort, isAlive, spawnKiln, waitFor, type KilnProcess } from "./support/processes.js";

describe("kiln up end to end", () => {
  let up: KilnProcess;
  let client: KilnClient;

  before(async () => {
    const port = await freePort();
    up = spawnKiln(["up", "--data-dir", tempDir("up"), "--port", String(port), "--executors", "2"]);
    client = await connect({ endpoint: `http://127.0.0.1:${port}` });
    await waitFor(
      "the local node",
      async () => (await client.listNodes()).find((n) => n.status?.state === flame.NodeState.Ready),
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${up.output()}`);
    });
  });

  after(async () => {
    client?.close();
    await up?.stop();
  });

  it("runs 2,000 ping tasks through real executor processes", async () => {
    const session = await client.createSession({ application: "kiln-ping" });
    const outputs = await Promise.all(Array.from({ length: 2000 }, () => session.run()));
    const pids = new Set<number>();
    for (const out of outputs) {
      const ping = parsePing(out);
      assert.equal(ping.host, os.hostname());
      pids.add(ping.pid);
    }
    const info = await session.info();
    assert.equal(info.status?.succeed, 2000);
    assert.equal(info.status?.failed, 0);
    const executors = await client.listExecutors();
    assert.ok(executors.length >= 1 && executors.length <= 2, `1–2 executors (got ${executors.length})`);
    assert.ok(executors.every((e) => e.status?.sessionId === session.id));
    await session.close();
    // Closing a session unbinds its executors: their processes are stopped and reaped.
    await waitFor("executors to unbind", async () => (await client.listExecutors()).length === 0 || undefined, 15_000);
    for (const pid of pids) await waitFor(`service process ${pid} to exit`, () => !isAlive(pid) || undefined, 10_000);
  });

  it("shuts down cleanly on SIGTERM", async () => {
    client.close();
    assert.equal(await up.stop("SIGTERM"), 0, up.output());
  });
});
