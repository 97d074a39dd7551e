import { connect, type KilnClient } from "@kiln/sdk";
import assert from "node:assert/strict";
import * as os from "node:os";
import { after, before, describe, it } from "node:test";
import { startCli, type CliProcess } from "./cli-helpers.js";
import { fixtureApp } from "./support/agent-helpers.js";
import { parsePing } from "./support/ping-app.js";
import { tempDir } from "./support/control-plane.js";
import { isAlive, waitFor } from "./support/processes.js";

const enc = (text: string) => new TextEncoder().encode(text);

describe("kiln up end to end", () => {
  let up: CliProcess;
  let client: KilnClient;

  before(async () => {
    up = startCli(["up", "--data-dir", tempDir("up"), "--port", "0", "--executors", "2"]);
    // Printed once the local agent's node is registered.
    const endpoint = (await up.waitFor(/Kiln is up at (http:\/\/\S+)/, 40_000))[1]!;
    client = await connect({ endpoint });
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

  it("runs session.run() against a Flame-only service (unary OnTaskInvoke, no kiln.v1 stream)", async () => {
    const service = fixtureApp("agent-flame-service.ts");
    await client.registerApplication("flame-only", {
      command: service.command!,
      arguments: service.arguments,
      labels: ["kiln.concurrency=4"],
      delayReleaseSeconds: 1,
    });
    const session = await client.createSession({ application: "flame-only", commonData: enc("cd") });
    const inputs = Array.from({ length: 200 }, (_, i) => `in${i}`);
    const outputs = await Promise.all(inputs.map((input) => session.run(enc(input))));
    // The service echoes its task id, so every result must come from the task it was asked for.
    const seen = new Set<string>();
    outputs.forEach((out, i) => {
      const match = /^flame:(\d+):(.*):cd$/.exec(new TextDecoder().decode(out));
      assert.ok(match, `output of task ${i}: ${new TextDecoder().decode(out)}`);
      assert.equal(match[2], inputs[i]);
      seen.add(match[1]!);
    });
    assert.equal(seen.size, 200, "200 distinct task ids");
    assert.equal((await session.info()).status?.succeed, 200);
    await session.close();
    await waitFor("executors to unbind", async () => (await client.listExecutors()).length === 0 || undefined, 15_000);
    await client.unregisterApplication("flame-only");
  });

  it("shuts down cleanly on SIGTERM", async () => {
    client.close();
    assert.equal(await up.stop(), 0, up.output());
  });
});
