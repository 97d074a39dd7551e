// A user's own project, outside this repository, gets the Kiln packages the way the README says
// (`npm run pack`, then `npm install` of the tarballs) and uses them against `kiln up`: a Runner
// call of its own function (with an npm dependency), and a serve() service it deploys with
// `kiln deploy`.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import * as tar from "tar";
import {
  CLI_ENV,
  runCli,
  runCommand,
  startKilnUp,
  type CliResult,
  type KilnUp,
} from "../packages/kiln/test/cli-helpers.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const packed = path.join(root, "dist-packages");
// Generous for a clean machine, where npm downloads what its cache lacks.
const NPM_TIMEOUT_MS = 150_000;

/** Versions this repository already locks, so npm finds them in its cache. */
function lockedVersion(name: string): string {
  const lock = JSON.parse(fs.readFileSync(path.join(root, "package-lock.json"), "utf8")) as {
    packages: Record<string, { version: string }>;
  };
  return lock.packages[`node_modules/${name}`]!.version;
}

// npm runs this test with its own npm_* settings in the environment; the user's npm has none of them.
const NPM_ENV = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)));

async function npm(cwd: string, ...args: string[]): Promise<CliResult> {
  const r = await runCommand("npm", [...args, "--no-audit", "--no-fund", "--prefer-offline"], {
    cwd,
    env: NPM_ENV,
    timeoutMs: NPM_TIMEOUT_MS,
  });
  assert.equal(r.code, 0, `npm ${args.join(" ")} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

const SETTINGS_TS = `import { parse } from "yaml";

/** Runs remotely: reads YAML with the project's own dependency. */
export function settings(text: string): { name: string; pid: number } {
  return { ...(parse(text) as { name: string }), pid: process.pid };
}
`;

// The README's serve() example, with an npm dependency of its own.
const SERVICE_JS = `import { serve } from "@kiln/service";
import { stringify } from "yaml";

await serve({ onTaskInvoke: ({ input }) => stringify({ got: new TextDecoder().decode(input), pid: process.pid }) });
`;

const MAIN_TS = `import { connect, Runner } from "@kiln/sdk";

{
  await using runner = await Runner.open("user-project");
  const settings = await runner.service(runner.module<typeof import("./src/settings.js")>("src/settings.ts"), "settings");
  console.log(JSON.stringify({ runner: await settings("name: kiln") }));
}

const kiln = await connect();
const session = await kiln.createSession({ application: process.argv[2]! });
const output = new TextDecoder().decode(await session.run("hello"));
await session.close();
kiln.close();
console.log(JSON.stringify({ service: output }));
`;

describe("a user's own project, with the packed Kiln packages", () => {
  let project: string;
  let dataDir: string;
  let up: KilnUp | undefined;

  before(async () => {
    const pack = await runCommand("npm", ["run", "pack", "--silent"], { cwd: root, env: NPM_ENV, timeoutMs: 120_000 });
    assert.equal(pack.code, 0, `npm run pack:\n${pack.stdout}\n${pack.stderr}`);
    project = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-user-project-"));
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-user-project-data-"));
    assert.ok(path.relative(root, project).startsWith(".."), "the project is outside the repository");
    const manifest = { name: "my-kiln-project", private: true, type: "module", scripts: { start: "node service.js" } };
    fs.writeFileSync(path.join(project, "package.json"), JSON.stringify(manifest, null, 2));
    fs.mkdirSync(path.join(project, "src"));
    fs.writeFileSync(path.join(project, "src", "settings.ts"), SETTINGS_TS);
    fs.writeFileSync(path.join(project, "service.js"), SERVICE_JS);
    fs.writeFileSync(path.join(project, "main.ts"), MAIN_TS);
    // As the README says: the three SDK tarballs in one install, then tsx to run TypeScript.
    const sdk = ["protocol", "service", "sdk"].map((p) => path.join(packed, `kiln-${p}-0.1.0.tgz`));
    await npm(project, "install", ...sdk, `yaml@${lockedVersion("yaml")}`);
    await npm(project, "install", "--save-dev", `tsx@${lockedVersion("tsx")}`);
    up = await startKilnUp(dataDir);
  });

  after(async () => {
    try {
      if (up) assert.equal(await up.process.stop(), 0, up.process.output());
    } finally {
      for (const dir of [project, dataDir]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("npm resolves every dependency, @kiln/sdk's @kiln/protocol from the sibling tarball", async () => {
    // npm ls exits non-zero on a missing or invalid dependency.
    const tree = JSON.parse((await npm(project, "ls", "--all", "--json")).stdout) as {
      dependencies: Record<string, { version: string; resolved?: string; dependencies?: Record<string, unknown> }>;
    };
    assert.match(tree.dependencies["@kiln/protocol"]!.resolved ?? "", /^file:.*kiln-protocol-0\.1\.0\.tgz$/);
    assert.deepEqual(tree.dependencies["@kiln/sdk"]!.dependencies?.["@kiln/protocol"], { version: "0.1.0" });
    assert.ok(
      !fs.existsSync(path.join(project, "node_modules", "@kiln", "sdk", "node_modules")),
      "@kiln/sdk uses the top-level @kiln/protocol, no copy of its own",
    );
  });

  test("the packed kiln CLI holds what it runs: bin/, dist/ and runner-check/, no sources or tests", async () => {
    const files: string[] = [];
    await tar.t({ file: path.join(packed, "kiln-0.1.0.tgz"), onReadEntry: (e) => files.push(e.path) });
    for (const needed of [
      "package/bin/kiln.js",
      "package/dist/cli/main.js",
      "package/dist/apps/run/main.js",
      "package/runner-check/package.json",
      "package/runner-check/src/check.ts",
    ])
      assert.ok(files.includes(needed), `${needed} is packed`);
    assert.deepEqual(
      files.filter((f) => /^package\/(src|test)\//.test(f)),
      [],
      "no sources or tests",
    );
  });

  test("kiln deploy runs its serve() service, and a Runner call runs its own function", async () => {
    const deploy = await runCli(
      ["deploy", project, "--name", "my-service", "--endpoint", up!.endpoint, "--cache-endpoint", up!.cacheEndpoint],
      60_000,
    );
    assert.equal(deploy.code, 0, deploy.stderr);
    assert.match(deploy.stdout, /^Installer:\s+node$/m);
    const env = { ...CLI_ENV, KILN_ENDPOINT: up!.endpoint, KILN_CACHE_ENDPOINT: up!.cacheEndpoint };
    const run = await runCommand(process.execPath, ["--import", "tsx", "main.ts", "my-service"], {
      cwd: project,
      env,
      timeoutMs: 120_000,
    });
    assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
    const [runnerLine, serviceLine] = run.stdout.trim().split("\n");
    const { runner } = JSON.parse(runnerLine!) as { runner: { name: string; pid: number } };
    assert.equal(runner.name, "kiln", "the remote function parsed the YAML with the project's yaml");
    assert.ok(runner.pid > 0);
    const { service } = JSON.parse(serviceLine!) as { service: string };
    assert.match(service, /^got: hello\npid: \d+\n$/, "the deployed service answered with its own yaml");
  });
});
