import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import { runCli } from "./cli-helpers.js";

describe("kiln demo", () => {
  it("runs the ping workload on a throwaway cluster and removes it", async () => {
    const r = await runCli(["demo", "--tasks", "100", "--executors", "2"], 90_000);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /control plane\s+http:\/\/127\.0\.0\.1:\d+/);
    assert.match(r.stdout, /^Session kiln-ping-\S+ was created in \d+ ms\.$/m);
    assert.match(r.stdout, /^Succeeded:\s+100\/100$/m);
    assert.match(r.stdout, /^Throughput:\s+[\d.]+ tasks\/s$/m);
    const removed = /Stopped the cluster and removed (\S+)\./.exec(r.stdout);
    assert.ok(removed, r.stdout);
    assert.equal(existsSync(removed[1]!), false, `${removed[1]} should be gone`);
  });
});
