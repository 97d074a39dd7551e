/**
 * The queue towards an agent is bounded by bytes, not only by count: an executor whose window could
 * hold many tasks is given large inputs only up to a byte budget, the rest wait at the control plane.
 */
import { connect } from "@kiln/sdk";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { within } from "../../../test/support/within.js";
import { startAgent } from "../src/agent/agent.js";
import { startTestControlPlane, tempDir } from "./support/control-plane.js";
import { registerPingCopy } from "./support/ping-app.js";

/** A kiln-ping input that runs a minute, padded with JSON whitespace to `bytes`. */
function paddedPing(bytes: number): Uint8Array {
  const json = JSON.stringify({ durationMs: 60_000 });
  return new TextEncoder().encode(json + " ".repeat(bytes - json.length));
}

describe("dispatch: the bytes held towards an agent", () => {
  it("gives an executor with room for 16 tasks only 3 of 3 MiB each (an 8 MiB budget past the first)", async () => {
    const t = await startTestControlPlane();
    const agent = await startAgent({ endpoint: t.cp.endpoint, workDir: tempDir("dispatch-bytes"), executors: 1 });
    const client = await connect({ endpoint: t.cp.endpoint });
    try {
      await registerPingCopy(client, "wide-ping", 8);
      const session = await client.createSession({ application: "wide-ping" });
      const changes = client.watchSessions({ sessionIds: [session.id] });
      await session.createTasks(Array.from({ length: 8 }, () => paddedPing(3 * 1024 * 1024)));
      const seen = await within(
        (async () => {
          for await (const { sessions } of changes) {
            const status = sessions[0]?.status;
            if (status && status.running > 0) return status;
          }
          throw new Error("the sessions feed ended");
        })(),
        60_000,
        "tasks to start running",
      );
      // The window is filled in one turn, so the first change with running tasks shows all it got.
      assert.equal(seen.running, 3, "three inputs of 3 MiB: the third crosses 8 MiB");
      assert.equal(seen.pending, 5);
      await session.cancel();
    } finally {
      client.close();
      await agent.close();
      await t.close();
    }
  });
});
