// Every example under examples/ runs to the end against `kiln up`, as its header says to run it,
// and prints what it is meant to compute.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI_ENV, runCommand, startKilnUp, type CliResult, type KilnUp } from "../packages/kiln/test/cli-helpers.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const EXAMPLE_TIMEOUT_MS = 120_000;

describe("examples against kiln up", () => {
  let dataDir: string;
  let up: KilnUp | undefined;

  /** `node --import tsx examples/<name>/main.ts …args`, from the repository root, pointed at the cluster. */
  async function runExample(name: string, args: string[] = []): Promise<CliResult> {
    const env = { ...CLI_ENV, KILN_ENDPOINT: up!.endpoint, KILN_CACHE_ENDPOINT: up!.cacheEndpoint };
    const r = await runCommand(process.execPath, ["--import", "tsx", `examples/${name}/main.ts`, ...args], {
      cwd: root,
      env,
      timeoutMs: EXAMPLE_TIMEOUT_MS,
    });
    assert.equal(r.code, 0, `examples/${name} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
    return r;
  }

  before(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-examples-"));
    up = await startKilnUp(dataDir);
  });

  after(async () => {
    try {
      if (up) assert.equal(await up.process.stop(), 0, up.process.output());
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test("pi: estimates π from every batch", async () => {
    const { stdout } = await runExample("pi", ["20", "200000"]);
    const m = /π ≈ (\d\.\d+) \(off by [^)]+\) from ([\d,]+) points in (\d+) remote calls/.exec(stdout);
    assert.ok(m, stdout);
    assert.equal(m[2], "4,000,000", "every point of every batch was counted");
    assert.equal(m[3], "20");
    // 4 million darts: the standard error is under 0.001, so 0.01 never fails by chance.
    assert.ok(Math.abs(Number(m[1]) - Math.PI) < 0.01, `π ≈ ${m[1]}`);
  });

  test("pipeline: three chains of futures, each summarising a million values in [0, 1]", async () => {
    const { stdout } = await runExample("pipeline");
    const lines = [...stdout.matchAll(/^seed (\d): (\d+) values, mean (\d\.\d+), histogram (\S+)$/gmu)];
    assert.deepEqual(
      lines.map((l) => l[1]),
      ["1", "2", "3"],
      stdout,
    );
    for (const [, , count, mean, histogram] of lines) {
      assert.equal(count, "1000000");
      assert.ok(Math.abs(Number(mean) - 0.5) < 0.01, `uniform values average 0.5, got ${mean}`);
      assert.equal([...histogram!].length, 10, "ten buckets");
    }
  });

  test("conversation: the history survives the executor process being killed", async () => {
    const { stdout } = await runExample("conversation");
    const turns = [...stdout.matchAll(/^turn (\d) \(executor pid (\d+)\): (.*)$/gm)].map(([, turn, pid, text]) => ({
      turn: Number(turn),
      pid: Number(pid),
      text: text!,
    }));
    assert.deepEqual(
      turns.map((t) => t.turn),
      [1, 2, 3, 4],
      stdout,
    );
    assert.match(stdout, new RegExp(`killed executor process ${turns[1]!.pid}`));
    assert.notEqual(turns[2]!.pid, turns[1]!.pid, "turn 3 was answered by another process");
    assert.match(turns[2]!.text, /Earlier you said "what is a kiln\?"/, "which knew what was said before");
    assert.match(stdout, /transcript: \[ 'hello', 'what is a kiln\?', 'and a glaze\?', 'thanks' \]/);
  });
});
