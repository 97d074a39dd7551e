// The README's first steps, as a newcomer types them in a checkout: `npx kiln` is there after the one
// `npm install` (CI's `npm ci` is that first install), and its `-o json` output is JSON and nothing else.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI_ENV, runCommand, startKilnUp, type KilnUp } from "../packages/kiln/test/cli-helpers.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const version = (
  JSON.parse(fs.readFileSync(path.join(root, "packages/kiln/package.json"), "utf8")) as { version: string }
).version;

/** `npx kiln …args` in the checkout; `--no` makes npx fail rather than fetch some other `kiln` from the registry. */
function npxKiln(args: string[], env: NodeJS.ProcessEnv = {}) {
  return runCommand("npx", ["--no", "--", "kiln", ...args], {
    cwd: root,
    env: { ...CLI_ENV, ...env },
    timeoutMs: 60_000,
  });
}

describe("the front door", () => {
  let dataDir: string;
  let up: KilnUp | undefined;

  before(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-front-door-"));
    up = await startKilnUp(dataDir);
  });

  after(async () => {
    try {
      if (up) assert.equal(await up.process.stop(), 0, up.process.output());
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test("npx kiln runs the checkout's CLI, linked by the install", async () => {
    const r = await npxKiln(["--version"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), version);
    // The committed bin, not dist/cli/main.js: that does not exist yet when npm links bins.
    assert.equal(
      fs.realpathSync(path.join(root, "node_modules/.bin/kiln")),
      path.join(root, "packages/kiln/bin/kiln.js"),
    );
  });

  test("npx kiln … -o json prints JSON only, so it can be piped", async () => {
    const env = { KILN_ENDPOINT: up!.endpoint };
    const ping = await npxKiln(["ping", "-t", "20", "-o", "json"], env);
    assert.equal(ping.code, 0, ping.stderr);
    const summary = JSON.parse(ping.stdout) as { tasks: number; succeeded: number };
    assert.deepEqual([summary.tasks, summary.succeeded], [20, 20]);
    const list = await npxKiln(["list", "-s", "-o", "json"], env);
    assert.equal(list.code, 0, list.stderr);
    const { sessions } = JSON.parse(list.stdout) as { sessions: { metadata: { id: string } }[] };
    assert.ok(sessions.length >= 1, list.stdout);
  });
});
