import { ErrorCode, KilnError } from "@kiln/protocol";
import { connect, ObjectCache, Runner, runJob, type KilnClient, type Session } from "@kiln/sdk";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { startAgent } from "../src/agent/agent.js";
import { CLI_ENV, runCli, startCli, type CliProcess } from "./cli-helpers.js";
import type * as nestedModule from "./fixtures/runner-project/src/nested.js";

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "fixtures");
const SCAN = path.join(FIXTURES, "token-scan.mjs");
// Both carry the marker the scanning job looks for (it builds "kiln" + "secret-" itself).
const ADMIN = `kilnsecret-admin-${randomBytes(8).toString("hex")}`;
const NODE = `kilnsecret-node-${randomBytes(8).toString("hex")}`;
const PLANTED = "kilnsecret-planted";
const TASK_PREFIX = "kiln-task.v1.";

interface ScanReport {
  hits: { where: string; found: string }[];
  ancestors: number[];
  ancestorsRead: number;
  processesRead: number;
  filesRead: number;
  credential?: string;
}

function hasCode(code: ErrorCode, pattern?: RegExp) {
  return (err: unknown) =>
    err instanceof KilnError &&
    err.code === code &&
    (pattern === undefined || pattern.test(err.message)) &&
    // The refusal never echoes a secret back.
    !err.message.includes(ADMIN);
}
const denied = (pattern?: RegExp) => hasCode(ErrorCode.PermissionDenied, pattern);

/**
 * Separate `kiln cache`, `kiln server` and `kiln agent` processes, as on a
 * network: the cluster token reaches the servers on stdin, the node token
 * the servers in a file removed once they run and the agent on stdin; no
 * process is given a secret in its environment or arguments.
 */
describe("scoped credentials across kiln server, kiln cache and kiln agent", () => {
  let dir: string;
  const procs: CliProcess[] = [];
  let endpoint: string;
  let cacheEndpoint: string;
  let admin: KilnClient;
  let adminCache: ObjectCache;
  let session: Session;
  let credential: string;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-credentials-"));
    const nodeTokenFile = path.join(dir, "secrets", "node-token");
    await fs.mkdir(path.dirname(nodeTokenFile), { mode: 0o700 });
    await fs.writeFile(nodeTokenFile, `${NODE}\n`, { mode: 0o600 });
    const start = (args: string[], stdin: string) => {
      const p = startCli(args, {}, stdin);
      procs.push(p);
      return p;
    };
    const secretArgs = ["--token-file", "-", "--node-token-file", nodeTokenFile];
    const cache = start(["cache", "--port", "0", "--data-dir", path.join(dir, "cache"), ...secretArgs], `${ADMIN}\n`);
    cacheEndpoint = (await cache.waitFor(/listening at (http:\/\/\S+)/, 30_000))[1]!;
    const server = start(
      ["server", "--port", "0", "--data-dir", path.join(dir, "cp"), "--cache-endpoint", cacheEndpoint, ...secretArgs],
      `${ADMIN}\n`,
    );
    endpoint = (await server.waitFor(/listening at (http:\/\/\S+)/, 30_000))[1]!;
    await fs.rm(path.dirname(nodeTokenFile), { recursive: true });
    const agentArgs = ["agent", "--endpoint", endpoint, "--cache-endpoint", cacheEndpoint, "--executors", "2"];
    const agent = start([...agentArgs, "--work-dir", path.join(dir, "agent"), "--node-token-file", "-"], `${NODE}\n`);
    await agent.waitFor(/joined/, 30_000);
    assert.doesNotMatch(agent.output(), /warning/, "a token from a file is not warned about");

    // The control for the scan: a secret it must find.
    await fs.mkdir(path.join(dir, "planted"));
    await fs.writeFile(path.join(dir, "planted", "secret.txt"), `${PLANTED}\n`);
    admin = await connect({ endpoint, token: ADMIN });
    adminCache = new ObjectCache({ endpoint: cacheEndpoint, token: ADMIN });
  });

  after(async () => {
    admin?.close();
    adminCache?.close();
    const codes = await Promise.all(procs.reverse().map((p) => p.stop()));
    try {
      assert.deepEqual(
        codes,
        procs.map(() => 0),
        procs.map((p) => p.output()).join("\n---\n"),
      );
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("a job finds neither token in its env, any process it can read (ancestors first), or Kiln's files", async () => {
    session = await admin.createSession({ application: "kiln-exec" });
    const home = CLI_ENV.HOME!;
    const result = await runJob(session, {
      command: [process.execPath, SCAN, dir, path.join(home, ".kiln"), path.join(home, ".config", "kiln")],
    });
    const report = JSON.parse(result.stdout) as ScanReport;
    assert.deepEqual(
      report.hits,
      [{ where: path.join(dir, "planted", "secret.txt"), found: PLANTED }],
      "only the planted secret is found",
    );
    // The service process, the agent and the test runner's processes were all read.
    assert.ok(report.ancestorsRead >= 3, `read ${report.ancestorsRead} of ancestors ${report.ancestors.join(",")}`);
    assert.ok(report.filesRead > 5, `read ${report.filesRead} files (the stores, the agent's work dir)`);
    assert.ok(report.credential?.startsWith(TASK_PREFIX), "the service process holds a task credential instead");
    credential = report.credential!;
  });

  it("a task credential uses its own application's sessions and objects", async () => {
    const task = await connect({ endpoint, token: credential });
    const taskCache = new ObjectCache({ endpoint: cacheEndpoint, token: credential });
    try {
      assert.equal((await task.getSession(session.id)).metadata?.id, session.id);
      // A nested client: a session of its own application, with tasks.
      const nested = await task.createSession({ application: "kiln-exec" });
      await nested.close();
      const listed = await task.listSessionsPage({ application: "kiln-exec" });
      assert.ok(
        listed.sessions.some((s) => s.metadata?.id === nested.id),
        "it may list its application's sessions",
      );
      const ref = await taskCache.putObject(`kiln-exec/${session.id}/mine`, { n: 1 });
      assert.deepEqual(await taskCache.getObject(ref), { n: 1 });
      assert.ok((await taskCache.listObjects(`kiln-exec/${session.id}`)).some((o) => o.key === ref.key));
    } finally {
      task.close();
      taskCache.close();
    }
  });

  it("a task credential is refused PERMISSION_DENIED outside its application, and from the agent protocol", async () => {
    const other = await admin.createSession({ application: "kiln-ping" });
    const otherRef = await adminCache.putObject(`kiln-ping/${other.id}/theirs`, "secret data");
    const task = await connect({ endpoint, token: credential });
    const taskCache = new ObjectCache({ endpoint: cacheEndpoint, token: credential });
    try {
      await assert.rejects(
        task.registerApplication("mine", { command: "/bin/true" }),
        denied(/RegisterApplication: a task credential may only use its own application/),
      );
      await assert.rejects(task.unregisterApplication("kiln-ping"), denied());
      await assert.rejects(task.listSessions(), denied(/ListSession/));
      await assert.rejects(task.listSessionsPage(), denied(/ListSessions of every session/));
      await assert.rejects(task.listSessionsPage({ application: "kiln-ping" }), denied(/application "kiln-ping"/));
      await assert.rejects(
        task.getSession(other.id),
        denied(new RegExp(`session "${other.id}" of application "kiln-ping"`)),
      );
      await assert.rejects(task.createSession({ application: "kiln-ping" }), denied(/application "kiln-ping"/));
      await assert.rejects(task.getApplication("kiln-ping"), denied());
      await assert.rejects(taskCache.getObject(otherRef), denied(/scoped to application "kiln-exec"/));
      await assert.rejects(taskCache.putObject(`kiln-ping/${other.id}/x`, 1), denied());
      await assert.rejects(taskCache.listObjects("kiln-ping"), denied());
      await assert.rejects(
        startAgent({ endpoint, token: credential, workDir: path.join(dir, "rogue-agent"), executors: 1 }),
        /PERMISSION_DENIED|permission denied.*agent protocol/,
      );
    } finally {
      task.close();
      taskCache.close();
      await other.close();
    }
  });

  it("the node token serves as an agent (above) but may not list sessions, manage applications or write objects", async () => {
    const node = await connect({ endpoint, token: NODE });
    const nodeCache = new ObjectCache({ endpoint: cacheEndpoint, token: NODE });
    try {
      await assert.rejects(node.listSessions(), denied(/the node token may only speak kiln.v1.Agent/));
      assert.equal((await node.clusterInfo()).cacheEndpoint, cacheEndpoint, "agents find the cache they fetch from");
      await assert.rejects(node.registerApplication("mine", { command: "/bin/true" }), denied());
      await assert.rejects(node.createSession({ application: "kiln-exec" }), denied());
      const ref = await adminCache.putObject(`kiln-exec/${session.id}/package-like`, "bytes");
      assert.equal(await nodeCache.getObject(ref), "bytes", "agents read packages and objects");
      await assert.rejects(nodeCache.putObject(`kiln-exec/${session.id}/x`, 1), denied(/may only read objects/));
    } finally {
      node.close();
      nodeCache.close();
    }
  });

  it("a task credential runs a nested Runner of its own application, and may not register another", async () => {
    const project = path.join(dir, "project");
    await fs.cp(path.join(FIXTURES, "runner-project"), project, { recursive: true });
    const configPath = path.join(dir, "empty-config.yaml");
    await fs.writeFile(configPath, "");
    const runner = await Runner.open("nest", {
      project,
      endpoint,
      cacheEndpoint,
      token: ADMIN,
      cacheToken: ADMIN,
      configPath,
    });
    try {
      const addInside = await runner.service(runner.module<typeof nestedModule>("src/nested.ts"), "addInside");
      assert.deepEqual(await addInside("nest", 20, 22), { sum: 42, registered: false });
      await assert.rejects(
        addInside("nest-inner", 1, 2).get(),
        // Runner.open asks for the application first: another application's, so refused before it could register it.
        // The remote error arrives by its name and message.
        (e: unknown) =>
          (e as Error).name === "KilnError" &&
          /permission denied: .* application "nest-inner": .*scoped to application "nest"/.test((e as Error).message),
      );
    } finally {
      await runner.close();
    }
  });

  it("kiln runner-check passes: the Runner's service processes reach the cache with their task credentials", async () => {
    const check = startCli(
      ["runner-check", "--json", "--endpoint", endpoint, "--cache-endpoint", cacheEndpoint, "--token-file", "-"],
      {},
      `${ADMIN}\n`,
    );
    procs.push(check);
    const code = await check.exited(170_000);
    const steps = (JSON.parse(check.output()) as { steps: { step: string; ok: boolean; detail: string }[] }).steps;
    assert.equal(code, 0, check.output());
    for (const step of ["future chaining", "stateful instance"])
      assert.ok(steps.find((s) => s.step === step)?.ok, `${step}: ${check.output()}`);
  });

  it("a task credential is refused UNAUTHENTICATED once its session is closed, by the control plane and the cache", async () => {
    const own = await adminCache.putObject(`kiln-exec/${session.id}/after-close`, "x");
    // Only the cluster token may revoke.
    const forged = await fetch(`${cacheEndpoint}/v1/revocations/${session.id}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${NODE}` },
    });
    assert.equal(forged.status, 403, await forged.text());
    const cacheProcess = procs[0]!;
    await session.close();
    const task = await connect({ endpoint, token: credential });
    const taskCache = new ObjectCache({ endpoint: cacheEndpoint, token: credential });
    try {
      await assert.rejects(task.getSession(session.id), hasCode(ErrorCode.Unauthenticated), "refused at once");
      // The control plane tells the cache as the session closes.
      await cacheProcess.waitFor(new RegExp(`task credentials of session ${session.id} revoked`), 10_000);
      await assert.rejects(
        taskCache.getObject(own),
        (e: unknown) =>
          hasCode(ErrorCode.Unauthenticated)(e) &&
          // The SDK says where tokens come from; the cache's own reason is the cause.
          new RegExp(`session "${session.id}" ended when the session closed`).test(String((e as Error).cause)),
      );
    } finally {
      task.close();
      taskCache.close();
    }
  });
});

describe("kiln up --token-file: the supervisor's children get the token over stdin", () => {
  let dir: string;
  let up: CliProcess | undefined;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-credentials-up-"));
  });

  after(async () => {
    try {
      if (up) assert.equal(await up.stop(), 0, up.output());
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("a job of kiln up's agent finds the token nowhere: not in the agent, the cache or kiln up itself", async () => {
    const data = path.join(dir, "data");
    up = startCli(["up", "--data-dir", data, "--port", "0", "--executors", "1", "--token-file", "-"], {}, `${ADMIN}\n`);
    const m = await up.waitFor(/Kiln is up at (http:\/\/\S+)/, 40_000);
    assert.doesNotMatch(up.output(), /warning/);
    const client = await connect({ endpoint: m[1]!, token: ADMIN });
    try {
      const session = await client.createSession({ application: "kiln-exec" });
      const result = await runJob(session, {
        command: [process.execPath, SCAN, dir, path.join(CLI_ENV.HOME!, ".kiln")],
      });
      await session.close();
      const report = JSON.parse(result.stdout) as ScanReport;
      assert.deepEqual(report.hits, []);
      // The service process, the agent, kiln up, and on up to the test runner.
      assert.ok(report.ancestorsRead >= 3, `read ${report.ancestorsRead} of ancestors ${report.ancestors.join(",")}`);
      assert.ok(report.credential?.startsWith(TASK_PREFIX));
    } finally {
      client.close();
    }
  });

  it("kiln up given the token on its command line warns that its services could read it there", async () => {
    const exposed = startCli([
      "up",
      "--data-dir",
      path.join(dir, "exposed"),
      "--port",
      "0",
      "--executors",
      "1",
      "--token",
      ADMIN,
    ]);
    try {
      await exposed.waitFor(/warning: the cluster token is in this process's command line.*--token-file/, 40_000);
    } finally {
      await exposed.stop();
    }
  });
});

describe("token flags that cannot work are refused", () => {
  it("a node token without a cluster token, or equal to it, is refused at start, naming the rule (exit 2)", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-credentials-flags-"));
    try {
      const base = ["server", "--port", "0", "--data-dir", dir];
      const alone = await runCli([...base, "--node-token", "n0de"]);
      assert.equal(alone.code, 2, alone.stderr);
      assert.match(alone.stderr, /nodeToken: needs a cluster token \(--token\) too/);
      const same = await runCli([...base, "--token", "t0ken", "--node-token", "t0ken"]);
      assert.equal(same.code, 2, same.stderr);
      assert.match(same.stderr, /nodeToken: must differ from the cluster token/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("--token-file with --token, or a file that cannot be read or is empty, is a usage error (exit 2)", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-credentials-flags-"));
    try {
      const empty = path.join(dir, "empty");
      await fs.writeFile(empty, "\n");
      const both = await runCli(["list", "-s", "--token", "t", "--token-file", empty]);
      assert.equal(both.code, 2, both.stderr);
      assert.match(both.stderr, /--token-file: give the token or the file it is in, not both/);
      const missing = await runCli(["list", "-s", "--token-file", path.join(dir, "nope")]);
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(missing.stderr, /--token-file: cannot read .*nope/);
      const blank = await runCli(["list", "-s", "--token-file", empty]);
      assert.equal(blank.code, 2, blank.stderr);
      assert.match(blank.stderr, /--token-file: .*empty holds no token/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
