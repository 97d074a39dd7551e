import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { CLI, CLI_ENV, closedPort, runCli } from "./cli-helpers.js";

const GLOBAL_OPTIONS = ["--endpoint", "--token", "--cache-endpoint", "--context", "--config"];

const COMMAND_OPTIONS: Record<string, string[]> = {
  up: [
    "--data-dir",
    "--port",
    "--host",
    "--executors",
    "--cache-port",
    "--retention",
    "--max-package-bytes",
    "--max-package-entries",
  ],
  server: [
    "--data-dir",
    "--host",
    "--port",
    "--heartbeat-timeout",
    "--drain-timeout",
    "--retries",
    "--max-task-bytes",
    "--max-request-bytes",
    "--default-resreq",
    "--retention",
  ],
  agent: [
    "--name",
    "--executors",
    "--work-dir",
    "--max-package-bytes",
    "--max-package-entries",
    "--reconnect-max-delay",
  ],
  cache: ["--host", "--port", "--storage", "--data-dir", "--max-memory", "--max-spill", "--advertise"],
  deploy: ["--name", "--application", "--command", "--installer", "--exclude", "--dry-run", "-o, --output"],
  data: ["--limit", "--depth", "-o, --output"],
  demo: ["--tasks", "--executors"],
  status: ["-o, --output"],
  list: [
    "-a, --application",
    "-s, --session",
    "-t, --task",
    "-e, --executor",
    "-n, --node",
    "--state",
    "--app",
    "--limit",
    "-w, --watch",
    "-o, --output",
  ],
  view: ["-a, --application", "-s, --session", "-t, --task", "-n, --node", "-w, --watch", "-o, --output"],
  create: ["-a, --application", "--app", "-p, --priority", "-r, --resreq", "--min", "--max", "--id"],
  cancel: ["-s, --session", "-t, --task", "-o, --output"],
  close: ["-s, --session"],
  delete: ["-s, --session"],
  register: ["-f, --file"],
  update: ["-f, --file", "-a, --application"],
  unregister: ["-a, --application"],
  completion: [],
  ping: [
    "-a, --application",
    "-t, --tasks",
    "-d, --duration",
    "-m, --memory",
    "-c, --common-data",
    "-p, --perf",
    "-P, --priority",
    "-r, --resreq",
    "-o, --output",
  ],
};

describe("kiln --help", () => {
  it("lists every command", async () => {
    const r = await runCli(["--help"]);
    assert.equal(r.code, 0, r.stderr);
    for (const command of Object.keys(COMMAND_OPTIONS)) assert.match(r.stdout, new RegExp(`^  ${command}\\b`, "m"));
    assert.match(
      r.stdout,
      /Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the cluster or cache,\n4 upload failed \(kiln deploy\), 130 interrupted/,
    );
  });

  it("kiln help <command> exits 0; kiln alone shows help and exits 2", async () => {
    const help = await runCli(["help", "ping"]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^Usage: kiln ping/m);
    const bare = await runCli([]);
    assert.equal(bare.code, 2);
    assert.match(bare.stderr, /^Usage: kiln/m);
  });

  for (const [command, options] of Object.entries(COMMAND_OPTIONS)) {
    it(`kiln ${command} --help lists its options and the global ones`, async () => {
      const r = await runCli([command, "--help"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^Usage: kiln ${command}`, "m"));
      for (const option of [...options, ...GLOBAL_OPTIONS])
        assert.ok(r.stdout.includes(option), `${command}: ${option}`);
    });
  }
});

describe("usage errors exit 2 without touching the cluster", () => {
  // Pointing at a closed port proves it: reaching for the cluster would exit 3, not 2.
  let endpoint: string;
  let dir: string;
  before(async () => {
    endpoint = `http://127.0.0.1:${await closedPort()}`;
    dir = await mkdtemp(path.join(os.tmpdir(), "kiln-cli-usage-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const cases: [string, string[], RegExp][] = [
    ["an unknown command", ["frobnicate"], /unknown command 'frobnicate'/],
    ["an unknown option", ["list", "-a", "--bogus"], /unknown option '--bogus'/],
    ["list without a kind", ["list"], /exactly one of -a, -s, -t, -e, -n/],
    ["list with two kinds", ["list", "-a", "-s"], /exactly one of -a, -s, -t, -e, -n/],
    [
      "a session state that is not one",
      ["list", "-s", "--state", "open,done"],
      /--state: "done" is not a session state \(allowed: open, closed\)/,
    ],
    [
      "a task state that is not one",
      ["list", "-t", "--state", "open"],
      /--state: "open" is not a task state \(allowed: pending, running, succeed, failed, cancelled\)/,
    ],
    ["a filter on a list that has none", ["list", "-n", "--state", "open"], /go with -s \(sessions\) or -t \(tasks\)/],
    ["a watch of a list that has no stream", ["list", "-e", "-w"], /go with -s \(sessions\) or -t \(tasks\)/],
    ["a task watch without its session", ["list", "-t", "-w"], /kiln list -t -s ID -w/],
    ["-t with -s but no id", ["list", "-t", "-s"], /with -t, -s needs the session's id/],
    ["a zero --limit", ["list", "-s", "--limit", "0"], /must be from 1/],
    ["a watch of an application", ["view", "-a", "kiln-ping", "-w"], /-w watches a session or a task/],
    ["cancel without a session", ["cancel", "-t", "1"], /required option '-s, --session <id>'/],
    ["a bad output format", ["list", "-a", "-o", "xml"], /Allowed choices are table, json/],
    ["a task count that is not a number", ["ping", "-t", "ten"], /"ten" is not a whole number/],
    ["a zero task count", ["ping", "-t", "0"], /must be from 1/],
    [
      "a retention that is not a duration",
      ["server", "--retention", "10", "--port", "0"],
      /--retention <duration>' argument '10' is invalid\. "10" is not a duration/,
    ],
    [
      "a retention of kiln up that is not a duration",
      ["up", "--retention", "1.5h", "--port", "0"],
      /"1\.5h" is not a duration/,
    ],
    ["a bad resource request", ["create", "-a", "x", "-r", "cpu=lots"], /resreq\.cpu: "lots" must be a whole number/],
    ["create without an application", ["create"], /^error: -a is required \(or flmctl's spelling, --app\)$/m],
    ["create with -a and --app", ["create", "-a", "x", "--app", "y"], /-a and --app say the same thing/],
    ["update without a file", ["update"], /^error: -f is required \(or flmctl's spelling, -a\)$/m],
    [
      "deploy without a path",
      ["deploy", "--name", "x"],
      /^error: <path> is required \(or flmctl's spelling, --application\)$/m,
    ],
    ["a task without its session", ["view", "-t", "1"], /-t TASK needs the session too/],
    ["close without a session", ["close"], /required option '-s, --session <id>'/],
    [
      "an explicit --config that does not exist",
      ["list", "-a", "--config", "/nonexistent/kiln.yaml"],
      /^error: --config: no config file at \/nonexistent\/kiln\.yaml \(INVALID_ARGUMENT\)$/m,
    ],
    [
      "an explicit --config that does not exist, for the object cache",
      ["cache", "ls", "demo", "--config", "/nonexistent/kiln.yaml"],
      /^error: --config: no config file at \/nonexistent\/kiln\.yaml \(INVALID_ARGUMENT\)$/m,
    ],
    [
      "register of a missing file",
      ["register", "-f", "/nonexistent/apps.yaml"],
      /cannot read \/nonexistent\/apps\.yaml/,
    ],
  ];
  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await runCli([...args, "--endpoint", endpoint]);
      assert.equal(r.code, 2, `${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, message);
    });
  }

  it("a KILN_CONFIG that names no file (the default ~/.kiln/config.yaml may be missing)", () => {
    const r = spawnSync(process.execPath, [CLI, "list", "-n", "--endpoint", endpoint], {
      env: { ...CLI_ENV, KILN_CONFIG: path.join(dir, "typo.yaml") },
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr, `error: KILN_CONFIG: no config file at ${path.join(dir, "typo.yaml")} (INVALID_ARGUMENT)\n`);
  });

  it("agent without an endpoint", async () => {
    const r = await runCli(["agent"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /kiln agent needs --endpoint URL/);
  });

  it("register with one bad document in a multi-document file names it and registers nothing", async () => {
    const file = path.join(dir, "apps.yaml");
    await writeFile(
      file,
      "metadata:\n  name: good-one\nspec:\n  command: /bin/true\n---\nspec:\n  command: /bin/false\n---\nmetadata: { name: good-two }\n",
    );
    const r = await runCli(["register", "-f", file, "--endpoint", endpoint]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /apps\.yaml: document 2: metadata\.name: is required/);
    assert.equal(r.stdout, "");
  });

  it("register with broken YAML names the document", async () => {
    const file = path.join(dir, "broken.yaml");
    await writeFile(file, "metadata: { name: a }\n---\nmetadata: { name: [b\n");
    const r = await runCli(["register", "-f", file, "--endpoint", endpoint]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /document 2: invalid YAML/);
  });
});

describe("an unreachable cluster exits 3", () => {
  for (const args of [
    ["list", "-a"],
    ["ping", "-t", "3"],
    ["view", "-s", "s-1"],
    ["create", "-a", "kiln-ping"],
    ["status"],
  ]) {
    it(`kiln ${args.join(" ")}`, async () => {
      const port = await closedPort();
      const r = await runCli([...args, "--endpoint", `http://127.0.0.1:${port}`]);
      assert.equal(r.code, 3, `${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^error: cannot reach the Kiln cluster at http://127\\.0\\.0\\.1:${port}\\b`));
      assert.match(r.stderr, /kiln up/);
      assert.match(r.stderr, /\(UNAVAILABLE\)\n$/);
    });
  }

  it("takes the endpoint from KILN_ENDPOINT too", async () => {
    const port = await closedPort();
    const r = spawnSync(process.execPath, [CLI, "list", "-n"], {
      env: { ...CLI_ENV, KILN_ENDPOINT: `http://127.0.0.1:${port}` },
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port}`));
  });
});
