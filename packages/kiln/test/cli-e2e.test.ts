import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { HAS_SCRIPT, runCli, runCliInTerminal, startCli, type CliProcess } from "./cli-helpers.js";

/** An event as `-o json` prints it. */
interface Event {
  code?: number;
  message?: string;
}

// One `kiln up` for the whole file: starting a cluster is the slow part.
describe("kiln against a running cluster", () => {
  let dir: string;
  let up: CliProcess | undefined;
  let endpoint: string;
  const kiln = (...args: string[]) => runCli([...args, "--endpoint", endpoint], 60_000);

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "kiln-cli-e2e-"));
    up = startCli(["up", "--data-dir", path.join(dir, "data"), "--port", "0", "--executors", "2"]);
    endpoint = (await up.waitFor(/Kiln is up at (http:\/\/\S+)/, 40_000))[1]!;
  });

  after(async () => {
    try {
      if (up) {
        const code = await up.stop();
        assert.equal(code, 0, `kiln up should close cleanly on SIGTERM; output:\n${up.output()}`);
        assert.match(up.output(), /Stopped\./);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  let pingSession: string;

  it("ping -t 200 -o json runs every task and prints one JSON summary", async () => {
    const r = await kiln("ping", "-t", "200", "-o", "json");
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 1, r.stdout);
    const summary = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.deepEqual(Object.keys(summary).sort(), [
      "cancelled",
      "durationMs",
      "failed",
      "latencyMs",
      "session",
      "succeeded",
      "tasks",
      "tasksPerSecond",
    ]);
    assert.equal(summary.tasks, 200);
    assert.equal(summary.succeeded, 200);
    assert.equal(summary.failed, 0);
    assert.equal(summary.cancelled, 0);
    assert.ok((summary.tasksPerSecond as number) > 0);
    const latency = summary.latencyMs as { p50: number; p99: number };
    assert.ok(latency.p50 > 0 && latency.p99 >= latency.p50, JSON.stringify(latency));
    assert.ok(latency.p99 <= (summary.durationMs as number) + 1, JSON.stringify(summary));
    pingSession = summary.session as string;
    assert.match(pingSession, /^kiln-ping-/);
  });

  it("ping without -p prints the session line and one row per task", async () => {
    const r = await kiln("ping", "-t", "5", "-d", "10");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Session kiln-ping-\S+ was created in \d+ ms\.$/m);
    const rows = r.stdout.split("\n").filter((l) => /^\d+\s+Succeed\s+\S/.test(l));
    assert.deepEqual(
      rows.map((l) => l.split(/\s+/)[0]),
      ["1", "2", "3", "4", "5"],
    );
    assert.match(r.stdout, /^5\/5 tasks succeeded in [\d.]+ ms\.$/m);
  });

  it("ping -p prints the summary block", async () => {
    const r = await kiln("ping", "-p", "-t", "20");
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /tasks \|/, "no progress bar on a pipe");
    assert.match(r.stdout, /^Succeeded:\s+20\/20$/m);
    assert.match(r.stdout, /^Failed:\s+0$/m);
    assert.match(r.stdout, /^Throughput:\s+[\d.]+ tasks\/s$/m);
    assert.match(r.stdout, /^Latency:\s+p50 [\d.]+ ms, p99 [\d.]+ ms$/m);
  });

  it(
    `ping draws a progress bar on a terminal, with -p too${HAS_SCRIPT ? "" : " (skipped: no script(1) to make a terminal)"}`,
    {
      skip: !HAS_SCRIPT,
    },
    async () => {
      for (const perf of [["-p"], []]) {
        const r = await runCliInTerminal(["ping", ...perf, "-t", "20", "--endpoint", endpoint], 60_000);
        assert.equal(r.code, 0, r.stdout);
        assert.match(r.stdout, /100% \| 20\/20 tasks \| 0 failed/, r.stdout);
        assert.match(r.stdout, perf.length ? /^Succeeded:\s+20\/20\r?$/m : /^20\/20 tasks succeeded in /m);
      }
      const json = await runCliInTerminal(["ping", "-o", "json", "-t", "5", "--endpoint", endpoint], 60_000);
      assert.equal(json.code, 0, json.stdout);
      assert.doesNotMatch(json.stdout, /tasks \|/, "-o json stays one JSON line, even on a terminal");
    },
  );

  it("ping exits 1 when tasks fail, showing each failure", async () => {
    // kiln-ping refuses allocations above 4 GiB, so every task fails in the service.
    const r = await kiln("ping", "-t", "3", "-m", "5g");
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout.split("\n").filter((l) => /^\d+\s+Failed\s+\S/.test(l)).length, 3, r.stdout);
    assert.match(r.stderr, /^error: 3 of 3 tasks failed\n$/);
  });

  it("Ctrl-C during ping closes its session and exits 130", async () => {
    const ping = startCli(["ping", "-t", "50", "-d", "5000", "--endpoint", endpoint]);
    try {
      const id = (await ping.waitFor(/Session (\S+) was created/))[1]!;
      ping.child.kill("SIGINT");
      assert.equal(await ping.exited(), 130, ping.output());
      assert.match(ping.output(), new RegExp(`interrupted: session ${id} was closed`));
      assert.match((await kiln("view", "-s", id)).stdout, /^State:\s+Closed$/m);
    } finally {
      await ping.stop();
    }
  });

  it("list shows the ping session (closed), the built-in app, the node and executors", async () => {
    const sessions = await kiln("list", "-s");
    assert.equal(sessions.code, 0, sessions.stderr);
    assert.match(
      sessions.stdout,
      /^ID\s+State\s+App\s+Resources\s+Priority\s+Pending\s+Running\s+Succeed\s+Failed\s+Cancelled\s+Created$/m,
    );
    const row = sessions.stdout.split("\n").find((l) => l.startsWith(`${pingSession} `));
    assert.ok(row, sessions.stdout);
    assert.match(
      row,
      /^\S+\s+Closed\s+kiln-ping\s+cpu=\d+,mem=\S+,gpu=\d+\s+0\s+0\s+0\s+200\s+0\s+0\s+\d\d:\d\d:\d\d$/,
    );

    const apps = await kiln("list", "-a");
    assert.match(apps.stdout, /^Name\s+State\s+Shim\s+Tags\s+Created\s+Command$/m);
    assert.match(apps.stdout, /^kiln-ping\s+Enabled\s+Host\s/m);

    const nodes = await kiln("list", "-n");
    assert.match(nodes.stdout, /^Name\s+Hostname\s+Status\s+CPU\s+Memory\s+Arch\s+OS$/m);
    assert.match(nodes.stdout, /\sReady\s+2\s/);

    const executors = await kiln("list", "-e");
    assert.equal(executors.code, 0, executors.stderr);
    assert.match(executors.stdout, /^ID\s+State\s+Session\s+Node$/m);

    const json = await kiln("list", "-s", "-o", "json");
    const parsed = JSON.parse(json.stdout) as { sessions: { metadata: { id: string } }[] };
    assert.ok(parsed.sessions.some((s) => s.metadata.id === pingSession));
  });

  it("view shows a session, a task and a node", async () => {
    const session = await kiln("view", "-s", pingSession);
    assert.equal(session.code, 0, session.stderr);
    assert.match(session.stdout, /^Application:\s+kiln-ping$/m);
    assert.match(session.stdout, /^State:\s+Closed$/m);
    assert.match(session.stdout, /^Tasks: 0 pending, 0 running, 200 succeed, 0 failed$/m);

    const task = await kiln("view", "-s", pingSession, "-t", "1");
    assert.equal(task.code, 0, task.stderr);
    assert.match(task.stdout, /^Task:\s+1$/m);
    assert.match(task.stdout, /^State:\s+Succeed$/m);
    assert.match(task.stdout, /^Output:\s+\S/m);
    assert.match(task.stdout, /^  \d\d:\d\d:\d\d\.\d{3}: .* \(\d+\)$/m);

    assert.match(task.stdout, /^  \d\d:\d\d:\d\d\.\d{3}: created \(0\)$/m);
    assert.doesNotMatch(task.stdout, /: \(\d+\)$/m, "no event without a message");

    const json = await kiln("view", "-s", pingSession, "-o", "json");
    const parsed = JSON.parse(json.stdout) as { session: unknown; tasks: { status: { events: Event[] } }[] };
    assert.equal(parsed.tasks.length, 200);
    for (const t of parsed.tasks)
      for (const e of t.status.events) assert.ok(e.message?.trim(), `an event without a message: ${JSON.stringify(t)}`);

    const nodeName = (await kiln("list", "-n")).stdout.split("\n")[1]!.split(/\s+/)[0]!;
    const node = await kiln("view", "-n", nodeName);
    assert.equal(node.code, 0, node.stderr);
    assert.match(node.stdout, /^Status:\s+Ready$/m);
  });

  it("a malformed context in the config file breaks only the commands that use it", async () => {
    const config = path.join(dir, "config.yaml");
    await writeFile(
      config,
      "current-context: broken\ncontexts:\n" +
        "  - name: broken\n    cluster: { endpoint: 'localhost:7420' }\n" +
        `  - name: good\n    cluster: { endpoint: ${endpoint} }\n`,
    );
    const broken = await runCli(["list", "-a", "--config", config]);
    assert.equal(broken.code, 2, broken.stderr);
    assert.match(broken.stderr, /^error: contexts\[0\]\.cluster\.endpoint: "localhost:7420" must start with http/);
    assert.ok(broken.stderr.includes(`(in ${config})`), broken.stderr);

    const otherContext = await runCli(["list", "-a", "--config", config, "--context", "good"]);
    assert.equal(otherContext.code, 0, otherContext.stderr);
    assert.match(otherContext.stdout, /^kiln-ping\s/m);
    const explicitEndpoint = await kiln("list", "-a", "--config", config);
    assert.equal(explicitEndpoint.code, 0, explicitEndpoint.stderr);
    assert.match(explicitEndpoint.stdout, /^kiln-ping\s/m);
  });

  it("create, close and delete a session", async () => {
    const created = await kiln("create", "-a", "kiln-ping", "-p", "5", "-r", "cpu=1,mem=256m", "--id", "cli-e2e-1");
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.stdout, "Session cli-e2e-1 was created.\n");
    assert.match((await kiln("list", "-s")).stdout, /^cli-e2e-1\s+Open\s+kiln-ping\s+cpu=1,mem=256Mi,gpu=0\s+5\s/m);

    const closed = await kiln("close", "-s", "cli-e2e-1");
    assert.equal(closed.code, 0, closed.stderr);
    assert.match((await kiln("view", "-s", "cli-e2e-1")).stdout, /^State:\s+Closed$/m);

    assert.equal((await kiln("delete", "-s", "cli-e2e-1")).code, 0);
    const gone = await kiln("view", "-s", "cli-e2e-1");
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error: .*cli-e2e-1.* \(NOT_FOUND\)\n$/);
  });

  it("register, view, update and unregister applications from YAML", async () => {
    const file = path.join(dir, "apps.yaml");
    const yaml = (description: string) =>
      `metadata:\n  name: cli-e2e-echo\nspec:\n  description: ${description}\n  command: /bin/cat\n` +
      `  arguments: ["-u"]\n  environments:\n    - { name: MODE, value: fast }\n  max_instances: 2\n` +
      `---\nmetadata:\n  name: cli-e2e-other\nspec:\n  command: /bin/true\n  delay_release: 5\n`;
    await writeFile(file, yaml("first"));
    const registered = await kiln("register", "-f", file);
    assert.equal(registered.code, 0, registered.stderr);
    assert.equal(
      registered.stdout,
      "Application cli-e2e-echo was registered.\nApplication cli-e2e-other was registered.\n",
    );

    const viewed = await kiln("view", "-a", "cli-e2e-echo");
    assert.match(viewed.stdout, /^Description:\s+first$/m);
    assert.match(viewed.stdout, /^Arguments:\s+-u$/m);
    assert.match(viewed.stdout, /^Environments:\s+MODE=fast$/m);
    assert.match(viewed.stdout, /^Max Instances:\s+2$/m);

    await writeFile(file, yaml("second"));
    assert.equal((await kiln("update", "-f", file)).code, 0);
    assert.match((await kiln("view", "-a", "cli-e2e-echo")).stdout, /^Description:\s+second$/m);

    const again = await kiln("register", "-f", file);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /\(ALREADY_EXISTS\)\n$/);

    for (const name of ["cli-e2e-echo", "cli-e2e-other"]) {
      const r = await kiln("unregister", "-a", name);
      assert.equal(r.code, 0, r.stderr);
    }
    assert.doesNotMatch((await kiln("list", "-a")).stdout, /cli-e2e-/);
  });

  it("unregister of an application with an open session drains it until the session closes", async () => {
    const file = path.join(dir, "drain.yaml");
    await writeFile(file, "metadata:\n  name: cli-e2e-drain\nspec:\n  command: /bin/true\n");
    assert.equal((await kiln("register", "-f", file)).code, 0);
    assert.equal((await kiln("create", "-a", "cli-e2e-drain", "--id", "cli-e2e-drain-1")).code, 0);
    const unregistered = await kiln("unregister", "-a", "cli-e2e-drain");
    assert.equal(unregistered.code, 0, unregistered.stderr);
    assert.equal(
      unregistered.stdout,
      "Application cli-e2e-drain is being unregistered: it takes no new sessions and is removed when its open sessions close.\n",
    );
    assert.match((await kiln("view", "-a", "cli-e2e-drain")).stdout, /^State:\s+Draining$/m);
    const refused = await kiln("create", "-a", "cli-e2e-drain");
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /application "cli-e2e-drain" is being unregistered.*\(FAILED_PRECONDITION\)\n$/);
    assert.equal((await kiln("close", "-s", "cli-e2e-drain-1")).code, 0);
    assert.equal((await kiln("view", "-a", "cli-e2e-drain")).code, 1, "removed when its last session closed");
  });

  it("register and update with bad documents report every problem and change nothing", async () => {
    const file = path.join(dir, "bad.yaml");
    await writeFile(
      file,
      "metadata: { name: cli-e2e-good }\nspec: { command: /bin/true }\n---\n" +
        "metadata: { name: cli-e2e-bad }\nspec: { max_instances: many, working_directory: relative/dir }\n---\n" +
        "metadata: { name: cli-e2e-bad2 }\nspec: { shim: docker }\n",
    );
    const r = await kiln("register", "-f", file);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(
      r.stderr,
      `error: ${file} has 3 problems; nothing was registered:\n` +
        '  document 2: spec.working_directory: must be an absolute path (got "relative/dir")\n' +
        '  document 2: spec.max_instances: must be a whole number, 0 or more (got string "many")\n' +
        '  document 3: spec.shim: must be Host or Wasm (got "docker")\n',
    );
    assert.doesNotMatch((await kiln("list", "-a")).stdout, /cli-e2e-good/);

    // A relative working_directory alone is caught by the CLI too (the server would refuse it with exit 1).
    await writeFile(file, "metadata: { name: cli-e2e-good }\nspec: { working_directory: srv }\n");
    const relative = await kiln("update", "-f", file);
    assert.equal(relative.code, 2, relative.stderr);
    assert.match(relative.stderr, /^error: .*bad\.yaml: document 1: spec\.working_directory: must be an absolute path/);
  });

  it("Flame's spellings work: update -a, create --app, ping -P, deploy --application", async () => {
    const file = path.join(dir, "flame.yaml");
    await writeFile(file, "metadata: { name: cli-e2e-flame }\nspec: { command: /bin/true, description: one }\n");
    assert.equal((await kiln("register", "-f", file)).code, 0);
    await writeFile(file, "metadata: { name: cli-e2e-flame }\nspec: { command: /bin/true, description: two }\n");
    const updated = await kiln("update", "-a", file);
    assert.equal(updated.code, 0, updated.stderr);
    assert.match((await kiln("view", "-a", "cli-e2e-flame")).stdout, /^Description:\s+two$/m);
    assert.equal((await kiln("unregister", "-a", "cli-e2e-flame")).code, 0);

    const created = await kiln("create", "--app", "kiln-ping", "--id", "cli-e2e-flame-1");
    assert.equal(created.code, 0, created.stderr);
    assert.equal((await kiln("close", "-s", "cli-e2e-flame-1")).code, 0);

    const ping = await kiln("ping", "-P", "7", "-t", "2", "-o", "json");
    assert.equal(ping.code, 0, ping.stderr);
    const session = (JSON.parse(ping.stdout) as { session: string }).session;
    assert.match((await kiln("view", "-s", session)).stdout, /^Priority:\s+7$/m);

    const exe = path.join(dir, "flame-svc.sh");
    await writeFile(exe, "#!/bin/sh\nexec cat\n", { mode: 0o755 });
    const deployed = await kiln("deploy", "--name", "cli-e2e-flame", "--application", exe, "--dry-run", "-o", "json");
    assert.equal(deployed.code, 0, deployed.stderr);
    assert.equal((JSON.parse(deployed.stdout) as { kind: string }).kind, "executable");
  });

  it("API errors print the message and the Kiln code, exit 1", async () => {
    const r = await kiln("view", "-a", "no-such-app");
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: .*no-such-app.* \(NOT_FOUND\)\n$/);
    const ping = await kiln("ping", "-a", "no-such-app", "-t", "1");
    assert.equal(ping.code, 1);
    assert.match(ping.stderr, /\(NOT_FOUND\)/);
  });
});

describe("kiln server", () => {
  it("serves tasks once a kiln agent joins it, and both stop cleanly", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "kiln-cli-server-"));
    const server = startCli(["server", "--port", "0", "--data-dir", path.join(dir, "data")]);
    let agent: CliProcess | undefined;
    try {
      const endpoint = (await server.waitFor(/listening at (http:\/\/\S+)/))[1]!;
      const stalled = await runCli(["ping", "-p", "-t", "3", "--stall-timeout", "1", "--endpoint", endpoint]);
      assert.equal(stalled.code, 1, "with no agent, ping gives up instead of waiting forever");
      assert.match(stalled.stderr, /timed out after 1000 ms/);
      assert.match(stalled.stderr, /is any agent connected\?/);
      const sessions = await runCli(["list", "-s", "--endpoint", endpoint]);
      assert.match(sessions.stdout, /^kiln-ping-\S+\s+Closed\s/m, "the stalled session was closed");
      agent = startCli([
        "agent",
        "--endpoint",
        endpoint,
        "--name",
        "cli-agent",
        "--executors",
        "1",
        "--work-dir",
        path.join(dir, "agent"),
      ]);
      await agent.waitFor(/Kiln agent cli-agent joined/);
      const r = await runCli(["ping", "-p", "-t", "20", "--endpoint", endpoint], 60_000);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Succeeded:\s+20\/20$/m);
      assert.match((await runCli(["list", "-n", "--endpoint", endpoint])).stdout, /^cli-agent\s+\S+\s+Ready\s/m);
      assert.equal(await agent.stop(), 0, agent.output());
      assert.equal(await server.stop(), 0, server.output());
    } finally {
      await agent?.stop();
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses to listen beyond loopback without a token, showing why", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "kiln-cli-server-"));
    try {
      const r = await runCli(["server", "--host", "0.0.0.0", "--port", "0", "--data-dir", dir]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /requires a token/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
