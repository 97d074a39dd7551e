import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { runCli } from "./cli-helpers.js";

const PI_EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../examples/pi/main.ts");

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

  it("then runs the pi example on the same cluster, as npm start does", async () => {
    const r = await runCli(["demo", "--tasks", "50", "--executors", "2", "--run", PI_EXAMPLE], 150_000);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^Succeeded:\s+50\/50$/m);
    const estimate = /^π ≈ (\d\.\d+) .* from 100,000,000 points in 100 remote calls/m.exec(r.stdout);
    assert.ok(estimate, r.stdout);
    assert.ok(Math.abs(Number(estimate[1]) - Math.PI) < 0.01, estimate[0]);
  });
});
