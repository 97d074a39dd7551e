import { InvalidArgumentError } from "@kiln/protocol";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { startAgent } from "../src/agent/agent.js";
import { DEFAULT_RECONNECT_MAX_DELAY_MS, reconnectDelayMs } from "../src/agent/control-stream.js";
import { resolveConfig, type ControlPlaneOptions } from "../src/control/config.js";
import { runCli } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";

const refused = (options: Partial<ControlPlaneOptions>, field: string, rule: RegExp) =>
  assert.throws(
    () => resolveConfig({ dataDir: "/unused", ...options }),
    (err: unknown) => err instanceof InvalidArgumentError && err.field === field && rule.test(err.message),
  );

describe("control-plane settings that cannot work are refused at start", () => {
  it("derives the heartbeat interval from the timeout: a third of it, at most 5 s", () => {
    assert.equal(resolveConfig({ dataDir: "/d" }).heartbeatIntervalMs, 5_000);
    assert.equal(resolveConfig({ dataDir: "/d", heartbeatTimeoutMs: 3_000 }).heartbeatIntervalMs, 1_000);
    assert.equal(resolveConfig({ dataDir: "/d", heartbeatTimeoutMs: 60_000 }).heartbeatIntervalMs, 5_000);
  });

  it("a drain timeout left out is at least the heartbeat timeout", () => {
    assert.equal(resolveConfig({ dataDir: "/d", heartbeatTimeoutMs: 45_000 }).drainTimeoutMs, 45_000);
  });

  it("refuses a heartbeat timeout below twice the heartbeat interval", () => {
    refused(
      { heartbeatTimeoutMs: 4_000, heartbeatIntervalMs: 5_000 },
      "heartbeatTimeoutMs",
      /4000 ms \(--heartbeat-timeout\) must be at least twice the heartbeat interval \(5000 ms\)/,
    );
  });

  it("refuses a drain timeout below the heartbeat timeout", () => {
    refused(
      { heartbeatTimeoutMs: 3_000, drainTimeoutMs: 1_000 },
      "drainTimeoutMs",
      /1000 ms \(--drain-timeout\) must be at least the heartbeat timeout \(3000 ms, --heartbeat-timeout\)/,
    );
  });

  it("refuses a batch limit that cannot carry one task of the largest input", () => {
    refused(
      { maxTaskBytes: 32 * 1024 * 1024, maxRequestBytes: 32 * 1024 * 1024 },
      "maxRequestBytes",
      /\(--max-request-bytes\) must be at least --max-task-bytes \(33554432\) \+ 64 KiB/,
    );
  });

  it("refuses zero, negative and fractional values, naming the flag", () => {
    refused({ heartbeatTimeoutMs: 0 }, "heartbeatTimeoutMs", /0 \(--heartbeat-timeout\) must be a whole number/);
    refused({ retries: -1 }, "retries", /-1 \(--retries\) must be a whole number of at least 0/);
    refused({ maxTaskBytes: 1.5 }, "maxTaskBytes", /1\.5 \(--max-task-bytes\)/);
  });

  it("kiln server exits at once with the rule, before listening", async () => {
    const r = await runCli([
      "server",
      "--data-dir",
      tempDir("bad-config"),
      "--port",
      "0",
      "--heartbeat-timeout",
      "3000",
      "--drain-timeout",
      "1000",
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /drainTimeoutMs: 1000 ms \(--drain-timeout\) must be at least the heartbeat timeout/);
    assert.doesNotMatch(r.stdout + r.stderr, /listening/);
  });
});

describe("agent settings", () => {
  it("refuses a reconnect cap of zero before connecting", async () => {
    await assert.rejects(
      startAgent({ endpoint: "http://127.0.0.1:1", reconnectMaxDelayMs: 0, workDir: tempDir("agent-cfg") }),
      /reconnectMaxDelayMs: 0 \(--reconnect-max-delay\) must be a whole number, at least 1/,
    );
  });

  it("reconnect back-off never exceeds its cap (2 s by default), however many failures", () => {
    assert.equal(DEFAULT_RECONNECT_MAX_DELAY_MS, 2_000);
    for (let failures = 1; failures <= 200; failures++) {
      const delay = reconnectDelayMs(failures, DEFAULT_RECONNECT_MAX_DELAY_MS);
      assert.ok(delay > 0 && delay <= 2_000, `attempt ${failures}: ${delay} ms`);
    }
    assert.ok(reconnectDelayMs(1, 2_000) <= 250, "the first retry is quick");
    assert.ok(reconnectDelayMs(100, 2_000) >= 1_000, "a long outage waits about the cap");
    assert.ok(reconnectDelayMs(100, 500) <= 500, "a smaller cap holds too");
  });
});
