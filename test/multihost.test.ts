/**
 * A Kiln cluster on several hosts, over TLS (mutual for the agents) with scoped tokens, and what it survives. Each host is a Linux network namespace on
 * a test network of its own (test/support/netns.ts): the control plane and object cache on one, an
 * agent on each of two others, the client on a fourth. Every agent runs from its own copy of Kiln
 * with the checkout (the control plane's install) and the other agent's copy hidden from it, so
 * nothing works by reaching another host's files.
 *
 * After each fault the store is asked for every task: each acknowledged task must have ended
 * (Succeed) exactly once, and the counting service's record of executions says how many ran twice,
 * which must stay within what the delivery rules allow.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI_ENV, watchProcess, type CliProcess, type CliResult } from "../packages/kiln/test/cli-helpers.js";
import { createCertificateAuthority, issueCertificate, serverNames } from "../packages/kiln/src/net/local-ca.js";
import { copyInstall, TestNetwork } from "./support/netns.js";
import { untilDirChanges } from "./support/until.js";

const CHECKOUT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const KILN = path.join(CHECKOUT, "packages/kiln/bin/kiln.js");
const FAULT_CLIENT = path.join(CHECKOUT, "test/fixtures/fault-client.mjs");
const AGENTS = ["agent-a", "agent-b"] as const;
type Agent = (typeof AGENTS)[number];
const APP = "counting";
const HEARTBEAT_TIMEOUT_MS = 10_000;
const DRAIN_TIMEOUT_MS = 15_000;

const network = TestNetwork.create(["server", ...AGENTS, "client"]);

describe("a cluster on several hosts", { skip: typeof network === "string" ? network : false }, () => {
  const net = network as TestNetwork;
  // Made in before(), so a suite that skips leaves nothing behind.
  const base = path.join(os.tmpdir(), `kiln-multihost-${process.pid}-${randomBytes(4).toString("hex")}`);
  // Every agent sees its own copy of Kiln at this one path, so an application's paths are the same on each.
  const agentInstall = path.join(base, "opt-kiln");
  const countFile = path.join(base, "executions.log");
  const token = randomBytes(24).toString("hex");
  // Agents hold only the node token, which speaks the agent protocol and reads objects, nothing else.
  const nodeToken = randomBytes(24).toString("hex");
  // Servers read their tokens from a file only they are given; agents get theirs on stdin.
  const tokenFile = path.join(base, "server-tokens", "token");
  const nodeTokenFile = path.join(base, "server-tokens", "node-token");
  const serverAddress = net.address?.("server");
  const endpoint = `https://${serverAddress}:7420`;
  const cacheEndpoint = `https://${serverAddress}:7422`;
  // One CA for the test network: the servers' certificate names the server host's address.
  const caFile = path.join(base, "tls-public", "ca.pem");
  const serverCert = path.join(base, "server-tokens", "server.pem");
  const serverKey = path.join(base, "server-tokens", "server-key.pem");
  // Mutual TLS for nodes: agents present a certificate of the same CA beside their node token.
  const agentCert = path.join(base, "tls-public", "agent.pem");
  const agentKey = path.join(base, "tls-public", "agent-key.pem");
  const clientEnv = { ...CLI_ENV, KILN_ENDPOINT: endpoint, KILN_TOKEN: token, KILN_TLS_CA: caFile };
  const running: Partial<Record<"server" | "cache" | Agent, CliProcess>> = {};
  // Every process each agent has been (it is restarted after a kill): execution records name the agent's pid.
  const agentPids: Record<Agent, Set<string>> = { "agent-a": new Set(), "agent-b": new Set() };
  /** Tasks that began on `agent` before the fault ended and were not done when it began: the ones it may have run. */
  const ranOn =
    (agent: Agent) =>
    (atFault: Executions, afterFault: Executions): Set<string> =>
      new Set(
        [...afterFault.starts]
          .filter(([id, where]) => !atFault.done.has(id) && where.some((agentPid) => agentPids[agent].has(agentPid)))
          .map(([id]) => id),
      );

  const startServer = async (): Promise<void> => {
    const args = ["server", "--host", serverAddress!, "--port", "7420", "--data-dir", path.join(base, "control")];
    args.push("--cache-endpoint", cacheEndpoint);
    args.push("--heartbeat-timeout", String(HEARTBEAT_TIMEOUT_MS), "--drain-timeout", String(DRAIN_TIMEOUT_MS));
    args.push("--token-file", tokenFile, "--node-token-file", nodeTokenFile);
    args.push("--tls-cert", serverCert, "--tls-key", serverKey, "--tls-client-ca", caFile);
    running.server = start("server", KILN, args, {});
    await running.server.waitFor(/control plane listening/, 60_000);
  };
  const startCache = async (): Promise<void> => {
    const args = ["cache", "--host", serverAddress!, "--port", "7422", "--data-dir", path.join(base, "cache")];
    args.push("--token-file", tokenFile, "--node-token-file", nodeTokenFile);
    args.push("--tls-cert", serverCert, "--tls-key", serverKey, "--tls-client-ca", caFile);
    running.cache = start("server", KILN, args, {});
    await running.cache.waitFor(/cache listening/, 60_000);
  };
  const startAgent = async (agent: Agent): Promise<void> => {
    const args = ["agent", "--endpoint", endpoint, "--name", agent, "--executors", "4", "--node-token-file", "-"];
    args.push("--tls-ca", caFile, "--tls-client-cert", agentCert, "--tls-client-key", agentKey);
    args.push("--work-dir", path.join(base, `work-${agent}`));
    running[agent] = start(
      agent,
      path.join(agentInstall, "packages/kiln/bin/kiln.js"),
      args,
      {},
      {
        hide: [CHECKOUT, path.join(base, "installs"), path.dirname(tokenFile)],
        binds: [{ from: path.join(base, "installs", agent), onto: agentInstall }],
        stdin: `${nodeToken}\n`,
      },
    );
    agentPids[agent].add(String(running[agent].child.pid));
    await running[agent].waitFor(/registered as node/, 60_000);
  };
  const start = (
    host: string,
    script: string,
    args: string[],
    env: NodeJS.ProcessEnv,
    spawnOptions: Parameters<TestNetwork["spawn"]>[3] = {},
  ): CliProcess =>
    watchProcess(
      net.spawn(host, process.execPath, [script, ...args], { ...spawnOptions, env: { ...CLI_ENV, ...env } }),
      `${host}: kiln ${args[0]}`,
    );
  /** Runs a command on the client host to its end. */
  const onClient = (args: string[], timeoutMs = 120_000, script = KILN): Promise<CliResult> => {
    const p = start("client", script, args, clientEnv);
    return p.exited(timeoutMs).then(
      (code) => ({ code, stdout: p.output(), stderr: "" }),
      async (err: unknown) => {
        await p.stop(1_000);
        throw err;
      },
    );
  };

  before(async () => {
    fs.mkdirSync(base);
    fs.mkdirSync(path.dirname(tokenFile), { mode: 0o700 });
    fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    fs.writeFileSync(nodeTokenFile, `${nodeToken}\n`, { mode: 0o600 });
    const ca = createCertificateAuthority("kiln multi-host test CA");
    const cert = issueCertificate(ca, { commonName: "kiln", hosts: serverNames(serverAddress!) });
    fs.mkdirSync(path.dirname(caFile));
    fs.writeFileSync(caFile, ca.cert);
    fs.writeFileSync(serverCert, cert.cert);
    fs.writeFileSync(serverKey, cert.key, { mode: 0o600 });
    const agentPair = issueCertificate(ca, { commonName: "kiln agent", client: true });
    fs.writeFileSync(agentCert, agentPair.cert);
    fs.writeFileSync(agentKey, agentPair.key, { mode: 0o600 });
    for (const agent of AGENTS) copyInstall(CHECKOUT, path.join(base, "installs", agent));
    fs.mkdirSync(agentInstall);
    await startCache();
    await startServer();
    await Promise.all(AGENTS.map(startAgent));
    const script = path.join(agentInstall, "test/fixtures/counting-service/main.mjs");
    const registered = await onClient(["register", APP, script, countFile], 60_000, FAULT_CLIENT);
    assert.equal(registered.code, 0, registered.stdout);
  });

  after(async () => {
    try {
      await Promise.all(Object.values(running).map((p) => p?.stop(5_000)));
    } finally {
      net.destroy();
      fs.rmSync(base, { recursive: true, force: true });
    }
  });

  it("runs 20,000 ping tasks across both agents", async () => {
    const r = await onClient(["ping", "-p", "-t", "20000", "-o", "json"], 300_000);
    assert.equal(r.code, 0, r.stdout);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as {
      succeeded: number;
      tasksPerSecond: number;
    };
    assert.equal(summary.succeeded, 20_000, r.stdout);
    console.log(`20,000 ping tasks over TLS on two agents: ${Math.round(summary.tasksPerSecond)} tasks/s`);
  });

  it("runs a Runner call chain with futures and state", async () => {
    const r = await onClient(["runner-check", "--json"], 300_000);
    assert.equal(r.code, 0, r.stdout);
  });

  it("runs a job whose declared output lands in the object cache", async () => {
    const r = await onClient(
      ["exec", "--json", "--output", "moderately_sensitive:report=out.txt", "--", "sh", "-c", "echo made > out.txt"],
      300_000,
    );
    assert.equal(r.code, 0, r.stdout);
    assert.match(r.stdout, /"state":\s*"succeeded"|Succeed|out\.txt/i, r.stdout);
  });

  /** Prints a fault's figures (docs/reliability.md quotes them). */
  const report = (fault: string, r: { reruns: string[]; seconds: number; resumed: number }): void =>
    console.log(
      `${fault}: ${r.reruns.length} re-runs; new work started ${r.resumed.toFixed(1)} s after the fault ended; ` +
        `all done ${r.seconds.toFixed(1)} s after it began`,
    );

  /**
   * Runs `tasks` counting tasks with `fault` injected once a quarter of them have started, and checks
   * the outcome: every acknowledged task Succeed in the store, and the re-runs (tasks that started more
   * than once) within `allowed`, given what was running on each agent when the fault came.
   */
  const underFault = async (
    name: string,
    fault: () => Promise<void>,
    allowed: (atFault: Executions, afterFault: Executions) => Set<string> | "none",
  ): Promise<{ reruns: string[]; seconds: number; resumed: number }> => {
    const session = `fault-${name}`;
    const tasks = 800;
    const client = start("client", FAULT_CLIENT, ["run", APP, session, String(tasks), "300", "180"], clientEnv);
    await client.waitFor(/submitted 800/, 60_000);
    await untilDirChanges(
      base,
      () => executions(countFile, session).starts.size >= tasks / 4,
      60_000,
      "a quarter of the tasks to start",
    );
    const atFault = executions(countFile, session);
    const began = Date.now();
    await fault();
    const afterFault = executions(countFile, session);
    const faultEnded = Date.now();
    // Back to work: a task that had not started before the fault ended starts (dispatch goes on).
    await untilDirChanges(
      base,
      () => executions(countFile, session).starts.size > Math.min(afterFault.starts.size, tasks - 1),
      120_000,
      "new work to start after the fault",
    );
    const resumed = (Date.now() - faultEnded) / 1000;
    const code = await client.exited(240_000);
    const seconds = (Date.now() - began) / 1000;
    assert.equal(code, 0, client.output());
    const outcome = JSON.parse(client.output().trim().split("\n").at(-1)!) as {
      acknowledged: string[];
      tasks: Record<string, string>;
    };
    assert.equal(outcome.acknowledged.length, tasks);
    for (const id of outcome.acknowledged)
      assert.equal(outcome.tasks[id], "Succeed", `task ${id}: ${outcome.tasks[id]}`);
    assert.equal(Object.keys(outcome.tasks).length, tasks, "no task was created twice");
    const { starts } = executions(countFile, session);
    const reruns = [...starts].filter(([, where]) => where.length > 1).map(([id]) => id);
    const mayRerun = allowed(atFault, afterFault);
    if (mayRerun === "none") assert.deepEqual(reruns, [], `re-runs after ${name}`);
    else
      for (const id of reruns)
        assert.ok(mayRerun.has(id), `task ${id} ran again but was not running on the lost agent`);
    return { reruns, seconds, resumed };
  };

  it("loses nothing when the control plane is killed -9 and restarted", async () => {
    const r = await underFault(
      "kill-control-plane",
      async () => {
        running.server!.child.kill("SIGKILL");
        await running.server!.exited(10_000).catch(() => null);
        await startServer();
      },
      () => "none",
    );
    report(`control plane kill -9`, r);
  });

  it("re-runs only what ran on an agent killed -9", async () => {
    const r = await underFault(
      "kill-agent",
      async () => {
        running["agent-a"]!.child.kill("SIGKILL");
        await running["agent-a"]!.exited(10_000).catch(() => null);
        await startAgent("agent-a");
      },
      ranOn("agent-a"),
    );
    report(`agent kill -9`, r);
  });

  it("keeps serving when the object cache is killed -9 and restarted", async () => {
    running.cache!.child.kill("SIGKILL");
    await running.cache!.exited(10_000).catch(() => null);
    await startCache();
    const r = await onClient(
      ["exec", "--json", "--output", "moderately_sensitive:report=out.txt", "--", "sh", "-c", "echo again > out.txt"],
      300_000,
    );
    assert.equal(r.code, 0, r.stdout);
  });

  it("finishes a client's acknowledged tasks when the client is killed -9", async () => {
    const session = "fault-kill-client";
    const client = start("client", FAULT_CLIENT, ["run", APP, session, "400", "300", "180"], clientEnv);
    await client.waitFor(/submitted 400/, 60_000);
    client.child.kill("SIGKILL");
    const watcher = await onClient(["run", APP, `${session}-check`, "0", "0", "5"], 60_000, FAULT_CLIENT);
    assert.equal(watcher.code, 0, watcher.stdout);
    await untilDirChanges(
      base,
      () => executions(countFile, session).done.size >= 400,
      120_000,
      "every task of the killed client to run",
    );
    const { starts } = executions(countFile, session);
    assert.equal([...starts.values()].filter((w) => w.length > 1).length, 0, "no task ran twice");
  });

  it("fences the late results of an agent cut off for longer than the drain timeout", async () => {
    const r = await underFault(
      "partition-agent",
      async () => {
        net.linkDown("agent-b");
        await sleepFor(HEARTBEAT_TIMEOUT_MS + DRAIN_TIMEOUT_MS + 10_000);
        net.linkUp("agent-b");
      },
      ranOn("agent-b"),
    );
    report(`agent link down 35 s`, r);
    await running["agent-b"]!.waitFor(/registered as node/, 60_000);
  });

  it("loses nothing when the control plane's link is down for 20 s", async () => {
    const r = await underFault(
      "partition-control-plane",
      async () => {
        net.linkDown("server");
        await sleepFor(20_000);
        net.linkUp("server");
      },
      (atFault, afterFault) =>
        new Set([...ranOn("agent-a")(atFault, afterFault), ...ranOn("agent-b")(atFault, afterFault)]),
    );
    report(`control plane link down 20 s`, r);
  });
});

interface Executions {
  /** Per task id, the pid of the agent each of its starts happened under. */
  starts: Map<string, string[]>;
  done: Set<string>;
}

/** What the counting service recorded for a session. */
function executions(file: string, session: string): Executions {
  const starts = new Map<string, string[]>();
  const done = new Set<string>();
  const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
  for (const line of text.split("\n")) {
    const [what, key, , agentPid] = line.split(" ");
    if (!key?.startsWith(`${session}/`)) continue;
    const id = key.slice(session.length + 1);
    if (what === "start") starts.set(id, [...(starts.get(id) ?? []), agentPid!]);
    else if (what === "done") done.add(id);
  }
  return { starts, done };
}

function sleepFor(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
