import { connect, type KilnClient, type Session } from "@kiln/sdk";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { within } from "../../../test/support/within.js";
import { startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";
import { parsePing, pingInput, registerPingCopy } from "./support/ping-app.js";
import { isAlive, processesWithEnv, waitFor } from "./support/processes.js";
import { TcpProxy } from "./support/tcp-proxy.js";

const { TaskState } = flame;

interface Cluster {
  /** The proxy's: it stays while the control plane behind it is killed and started again. */
  endpoint: string;
  proxy: TcpProxy;
  dataDir: string;
  server: CliProcess;
  agents: CliProcess[];
  agentDirs: string[];
  client: KilnClient;
}

/**
 * `kiln server` on a port the kernel picks, behind the cluster's proxy once its ready line says where
 * it listens; a restart gets a new port, so nothing has to rebind one that may have been taken.
 */
async function startServer(proxy: TcpProxy, dataDir: string): Promise<CliProcess> {
  const server = startCli([
    "server",
    "--data-dir",
    dataDir,
    "--port",
    "0",
    "--heartbeat-timeout",
    "3000",
    "--drain-timeout",
    "3000",
  ]);
  const endpoint = (await server.waitFor(/listening at (http:\/\/\S+)/))[1]!;
  proxy.target = Number(new URL(endpoint).port);
  return server;
}

async function startCluster(agentNames: string[]): Promise<Cluster> {
  const proxy = new TcpProxy();
  const endpoint = await proxy.start();
  const dataDir = tempDir("e2e");
  const server = await startServer(proxy, dataDir);
  const client = await connect({ endpoint });
  const agentDirs = agentNames.map((name) => tempDir(`agent-${name}`));
  const agents = agentNames.map((name, i) =>
    startCli(["agent", "--endpoint", endpoint, "--name", name, "--executors", "2", "--work-dir", agentDirs[i]!]),
  );
  // An agent prints this once the control plane has registered its node.
  await Promise.all(agents.map((a, i) => a.waitFor(new RegExp(`Kiln agent ${agentNames[i]} joined`))));
  return { endpoint, proxy, dataDir, server, agents, agentDirs, client };
}

async function stopCluster(c: Cluster | undefined): Promise<void> {
  if (!c) return;
  c.client.close();
  await Promise.all(c.agents.map((a) => a.stop()));
  await c.server.stop();
  await c.proxy.close();
}

/** Follows the session's watch stream (snapshot, then changes) until `enough` holds for its tasks' states. */
async function watchUntil(
  session: Session,
  enough: (states: flame.TaskState[]) => boolean,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const states = new Map<string, flame.TaskState>();
  const stop = new AbortController();
  const following = (async () => {
    for await (const updates of session.watch({ snapshot: true, omitOutput: true, signal: stop.signal })) {
      for (const u of updates) states.set(u.taskId, u.state);
      if (enough([...states.values()])) return;
    }
  })();
  try {
    await within(following, timeoutMs, what);
  } finally {
    stop.abort();
  }
}

/** Waits until no task of the session is pending or running, and returns all its tasks. */
async function settled(session: Session, timeoutMs: number): Promise<flame.Task[]> {
  const open = (s: flame.TaskState) => s === TaskState.Pending || s === TaskState.Running;
  await watchUntil(session, (states) => !states.some(open), timeoutMs, `session ${session.id} to settle`);
  const tasks: flame.Task[] = [];
  for await (const t of session.listTasks()) tasks.push(t);
  return tasks;
}

const succeedEvents = (t: flame.Task) => t.status!.events.filter((e) => e.code === TaskState.Succeed).length;

describe("failures end to end", () => {
  let cluster: Cluster | undefined;
  after(() => stopCluster(cluster));

  it("kill -9 of the control plane mid-session: after a restart every task ends Succeed exactly once", async () => {
    cluster = await startCluster(["n1"]);
    const { client } = cluster;
    await registerPingCopy(client, "slow-ping", 4);
    const session = await client.createSession({ application: "slow-ping" });
    const n = 600;
    await session.createTasks(Array.from({ length: n }, () => pingInput(20)));
    const succeeded = (states: flame.TaskState[]) => states.filter((s) => s === TaskState.Succeed).length > 50;
    await watchUntil(session, succeeded, 30_000, "some tasks to finish");
    cluster.proxy.target = undefined;
    cluster.server.child.kill("SIGKILL");
    await cluster.server.exited();
    cluster.server = await startServer(cluster.proxy, cluster.dataDir);
    const tasks = await settled(session, 90_000);
    assert.equal(tasks.length, n, "every acknowledged task is back");
    const adopted = tasks.filter((t) =>
      t.status!.events.some((e) => /still running .* after restart/.test(e.message ?? "")),
    );
    // Dispatches are not written to the store; the restarted control plane must still recognise the
    // attempts the agent kept running and adopt them rather than run those tasks again.
    assert.ok(adopted.length > 0, "tasks running at the crash were adopted after the restart");
    for (const t of tasks) {
      assert.equal(t.status!.state, TaskState.Succeed, `task ${t.metadata!.id}`);
      assert.equal(succeedEvents(t), 1, `task ${t.metadata!.id} succeeded exactly once`);
      assert.ok(t.spec!.output && parsePing(t.spec!.output).pid > 0, "its result is kept");
    }
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("kill -9 of a service process mid-session: every task ends with a recorded outcome", async () => {
    cluster = await startCluster(["n1"]);
    const { client } = cluster;
    await registerPingCopy(client, "slow-ping", 4);
    const session = await client.createSession({ application: "slow-ping" });
    const n = 400;
    const runs = Array.from({ length: n }, () => session.run(pingInput(20)).then(parsePing));
    const first = await Promise.race(runs);
    process.kill(first.pid, "SIGKILL");
    const results = await Promise.allSettled(runs);
    const tasks = await settled(session, 60_000);
    assert.equal(tasks.length, n);
    const failed = tasks.filter((t) => t.status!.state === TaskState.Failed);
    const succeeded = tasks.filter((t) => t.status!.state === TaskState.Succeed);
    assert.equal(failed.length + succeeded.length, n, "every task is Succeed or Failed");
    assert.ok(failed.length >= 1, "the tasks on the killed process fail");
    for (const t of failed) {
      const last = t.status!.events.at(-1)!;
      assert.match(last.message ?? "", /exited/, "the failure names the process exit");
    }
    const rejected = results.filter((r) => r.status === "rejected");
    assert.equal(rejected.length, failed.length, "run() rejects exactly the failed tasks");
    const events = (await client.getSession(session.id)).status!.events;
    assert.ok(
      events.some((e) => e.code === 1020),
      "the session records the process exit",
    );
    // The executor restarted its process: later tasks succeed.
    assert.ok(succeeded.length > 0);
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("an application that cannot start: bind failures become session events, then its pending tasks fail", async () => {
    cluster = await startCluster(["n1"]);
    const { client } = cluster;
    await client.registerApplication("broken", { command: "/nonexistent/kiln-test-command" });
    const session = await client.createSession({ application: "broken" });
    const runs = Array.from({ length: 3 }, () => session.run("x"));
    const results = await Promise.allSettled(runs);
    assert.ok(
      results.every((r) => r.status === "rejected"),
      "run() rejects instead of waiting forever",
    );
    for (const r of results) assert.match(String((r as PromiseRejectedResult).reason), /could not be bound/);
    const events = (await client.getSession(session.id)).status!.events;
    assert.ok(events.filter((e) => e.code === 1011).length >= 5, "each process-start failure is a session event");
    assert.ok(
      events.some((e) => e.code === 1002),
      "reaching the limit is recorded",
    );
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("kill -9 of an agent mid-session: its tasks move to another node and every task ends with an outcome", async () => {
    cluster = await startCluster(["a1", "a2"]);
    const { client } = cluster;
    await registerPingCopy(client, "slow-ping", 2);
    const session = await client.createSession({ application: "slow-ping" });
    const n = 400;
    const runs = Array.from({ length: n }, () => session.run(pingInput(40)).then(parsePing));
    // Wait until both nodes have bound executors (and so hold tasks), then kill the first agent.
    await waitFor("both nodes to be busy", async () => {
      const bound = (await client.listExecutors()).filter((e) => e.status!.state === flame.ExecutorState.ExecutorBound);
      return new Set(bound.map((e) => e.spec!.node)).size === 2 || undefined;
    });
    const victim = cluster.agents[0]!;
    const victimServices = processesWithEnv(cluster.agentDirs[0]!);
    assert.ok(victimServices.length > 0, "the agent runs service processes");
    victim.child.kill("SIGKILL");
    await victim.exited();
    await Promise.allSettled(runs);
    const tasks = await settled(session, 60_000);
    assert.equal(tasks.length, n);
    assert.ok(
      tasks.every((t) => t.status!.state === TaskState.Succeed || t.status!.state === TaskState.Failed),
      "every task has an outcome",
    );
    const requeued = tasks.filter((t) => t.status!.events.some((e) => /requeued/.test(e.message ?? "")));
    assert.ok(requeued.length >= 1, "tasks of the lost node were requeued");
    assert.ok(
      requeued.every((t) => t.status!.state === TaskState.Succeed),
      "and then succeeded elsewhere",
    );
    const nodes = await client.listNodes();
    assert.equal(nodes.find((x) => x.metadata!.name === "a1")?.status?.state, flame.NodeState.NotReady);
    // Service processes of the killed agent do not outlive it.
    for (const pid of victimServices)
      await waitFor(`orphaned service ${pid} to exit`, () => !isAlive(pid) || undefined, 10_000);
    await session.close();
  });
});
