import { createClient } from "@connectrpc/connect";
import { connect, ErrorCode, KilnError, OutcomeUnknownError, type KilnClient, type Session } from "@kiln/sdk";
import { flame, kiln } from "@kiln/protocol/proto";
import { createClusterTransport } from "@kiln/protocol/transport";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { within } from "../../../test/support/within.js";
import { runCli, startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";
import { parsePing, pingInput, registerPingCopy } from "./support/ping-app.js";
import { isAlive, processesWithEnv, waitFor } from "./support/processes.js";
import { storeBackends, stopStoreBackends } from "./support/store-backends.js";
import { TcpProxy } from "./support/tcp-proxy.js";

const COUNTING_SERVICE = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "../../../test/fixtures/counting-service/main.mjs",
);

const { TaskState } = flame;

interface Cluster {
  /** The proxy's: it stays while the control plane behind it is killed and started again. */
  endpoint: string;
  proxy: TcpProxy;
  dataDir: string;
  /** The server's --store (undefined: the SQLite file in dataDir). */
  store: string | undefined;
  server: CliProcess;
  agents: CliProcess[];
  agentDirs: string[];
  client: KilnClient;
}

/**
 * `kiln server` on a port the kernel picks, behind the cluster's proxy once its ready line says where
 * it listens; a restart gets a new port, so nothing has to rebind one that may have been taken.
 */
async function startServer(
  proxy: TcpProxy,
  dataDir: string,
  drainTimeoutMs = 3000,
  store?: string,
): Promise<CliProcess> {
  const server = startCli([
    "server",
    "--data-dir",
    dataDir,
    ...(store !== undefined ? ["--store", store] : []),
    "--port",
    "0",
    "--heartbeat-timeout",
    "3000",
    "--drain-timeout",
    String(drainTimeoutMs),
  ]);
  const [, endpoint, data] = await server.waitFor(/listening at (http:\/\/\S+) \(data: ([^)]*)\)/);
  assert.equal(data, store ?? dataDir, "the server keeps its state where it was told");
  proxy.target = Number(new URL(endpoint!).port);
  return server;
}

async function startCluster(
  agentNames: string[],
  o: { drainTimeoutMs?: number; patienceMs?: number; store?: { store: string | undefined; dataDir: string } } = {},
): Promise<Cluster> {
  const proxy = new TcpProxy();
  const endpoint = await proxy.start();
  const dataDir = o.store?.dataDir ?? tempDir("e2e");
  const store = o.store?.store;
  const server = await startServer(proxy, dataDir, o.drainTimeoutMs, store);
  const client = await connect({ endpoint, ...(o.patienceMs !== undefined ? { patienceMs: o.patienceMs } : {}) });
  const agentDirs = agentNames.map((name) => tempDir(`agent-${name}`));
  const agents = agentNames.map((name, i) =>
    startCli(["agent", "--endpoint", endpoint, "--name", name, "--executors", "2", "--work-dir", agentDirs[i]!]),
  );
  // An agent prints this once the control plane has registered its node.
  await Promise.all(agents.map((a, i) => a.waitFor(new RegExp(`Kiln agent ${agentNames[i]} joined`))));
  return { endpoint, proxy, dataDir, store, server, agents, agentDirs, client };
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

for (const backend of storeBackends()) {
  describe(`end to end on the ${backend.name} store`, { skip: backend.skip }, () => {
    let cluster: Cluster | undefined;
    after(async () => {
      await stopCluster(cluster);
      await stopStoreBackends();
    });

    it("the ping workload runs through a control plane and an agent", async () => {
      cluster = await startCluster(["n1"], { store: await backend.fresh() });
      const r = await runCli(["ping", "-t", "300", "-o", "json", "--endpoint", cluster.endpoint], 60_000);
      assert.equal(r.code, 0, r.stderr);
      const summary = JSON.parse(r.stdout) as { tasks: number; succeeded: number; session: string };
      assert.equal(summary.tasks, 300);
      assert.equal(summary.succeeded, 300);
      // Every output was stored: read back from the store after the session closed.
      const session = cluster.client.session(summary.session);
      let outputs = 0;
      for await (const t of session.listTasks()) if (t.spec!.output && parsePing(t.spec!.output).pid > 0) outputs++;
      assert.equal(outputs, 300);
      await stopCluster(cluster);
      cluster = undefined;
    });

    it("kill -9 of the control plane mid-session: after a restart every task ends Succeed exactly once", async () => {
      cluster = await startCluster(["n1"], { store: await backend.fresh() });
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
      cluster.server = await startServer(cluster.proxy, cluster.dataDir, undefined, cluster.store);
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
  });
}

describe("failures end to end", () => {
  let cluster: Cluster | undefined;
  after(() => stopCluster(cluster));

  it("kill -9 of a service process mid-session: every task ends with a recorded outcome", async () => {
    cluster = await startCluster(["n1"]);
    const { client } = cluster;
    await registerPingCopy(client, "slow-ping", 4);
    const session = await client.createSession({ application: "slow-ping" });
    // Long enough (200 tasks × 200 ms over 2 × 4 slots: about 5 s) that the process is still busy when
    // the first result has crossed a loaded machine and the kill lands.
    const n = 200;
    const runs = Array.from({ length: n }, () => session.run(pingInput(200)).then(parsePing));
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

/** kill -9 of the control plane; `restart` starts it again on the same data dir behind the same proxy. */
async function killServer(c: Cluster): Promise<void> {
  c.proxy.target = undefined;
  c.server.child.kill("SIGKILL");
  await c.server.exited();
}

/** Registers the counting service (test/fixtures/counting-service) and returns its record of executions. */
async function registerCounting(c: Cluster, name: string): Promise<Executions> {
  const file = path.join(c.dataDir, `${name}.count`);
  fs.writeFileSync(file, "");
  await c.client.registerApplication(name, {
    command: process.execPath,
    arguments: [COUNTING_SERVICE],
    environments: { COUNT_FILE: file },
    labels: ["kiln.concurrency=4"],
  });
  return new Executions(file);
}

/** What the counting service recorded: how many times each task started, and on which pids. */
class Executions {
  constructor(private readonly file: string) {}

  starts(): Map<string, number[]> {
    const byTask = new Map<string, number[]>();
    for (const line of fs.readFileSync(this.file, "utf8").split("\n")) {
      const [verb, id, pid] = line.split(" ");
      if (verb !== "start") continue;
      const pids = byTask.get(id!) ?? [];
      pids.push(Number(pid));
      byTask.set(id!, pids);
    }
    return byTask;
  }

  /** Tasks that started more than once. */
  reruns(): string[] {
    return [...this.starts()].filter(([, pids]) => pids.length > 1).map(([id]) => id);
  }
}

describe("nothing run twice, no outcome ambiguous", () => {
  let cluster: Cluster | undefined;
  after(() => stopCluster(cluster));

  it("kill -9 of the control plane while the agent stays up re-runs no task", async () => {
    cluster = await startCluster(["n1"], { drainTimeoutMs: 10_000 });
    const executions = await registerCounting(cluster, "counted");
    const session = await cluster.client.createSession({ application: "counted" });
    const n = 400;
    await session.createTasks(Array.from({ length: n }, () => "30"));
    await watchUntil(
      session,
      (states) => states.filter((s) => s === TaskState.Succeed).length > 60,
      60_000,
      "some tasks to finish",
    );
    await killServer(cluster);
    cluster.server = await startServer(cluster.proxy, cluster.dataDir, 10_000);
    const tasks = await settled(session, 120_000);
    assert.equal(tasks.length, n);
    for (const t of tasks) assert.equal(succeedEvents(t), 1, `task ${t.metadata!.id} succeeded exactly once`);
    assert.deepEqual(executions.reruns(), [], "no task ran twice");
    assert.equal(executions.starts().size, n);
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("kill -9 of an agent re-runs only tasks that were running on it", async () => {
    cluster = await startCluster(["a1", "a2"]);
    const executions = await registerCounting(cluster, "counted");
    const session = await cluster.client.createSession({ application: "counted" });
    const n = 300;
    await session.createTasks(Array.from({ length: n }, () => "40"));
    const { client } = cluster;
    await waitFor("both nodes to be busy", async () => {
      const bound = (await client.listExecutors()).filter((e) => e.status!.state === flame.ExecutorState.ExecutorBound);
      return new Set(bound.map((e) => e.spec!.node)).size === 2 || undefined;
    });
    const victimPids = new Set(processesWithEnv(cluster.agentDirs[0]!));
    assert.ok(victimPids.size > 0, "the victim runs service processes");
    cluster.agents[0]!.child.kill("SIGKILL");
    await cluster.agents[0]!.exited();
    const tasks = await settled(session, 90_000);
    assert.equal(tasks.length, n);
    for (const t of tasks) assert.equal(succeedEvents(t), 1, `task ${t.metadata!.id} succeeded exactly once`);
    const starts = executions.starts();
    for (const id of executions.reruns()) {
      const [first] = starts.get(id)!;
      assert.ok(victimPids.has(first!), `re-run task ${id} first ran on the killed agent (pid ${first})`);
      assert.equal(starts.get(id)!.length, 2, `task ${id} ran at most twice`);
    }
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("run() across a control-plane restart resumes waiting and succeeds, creating no task twice", async () => {
    cluster = await startCluster(["n1"], { patienceMs: 60_000 });
    const executions = await registerCounting(cluster, "counted");
    const session = await cluster.client.createSession({ application: "counted" });
    const n = 200;
    const runs = Array.from({ length: n }, () => session.run("50"));
    await waitFor("some tasks to start", () => executions.starts().size >= 20 || undefined);
    await killServer(cluster);
    // Calls made during the outage wait for the control plane too.
    const late = Array.from({ length: 20 }, () => session.run("10"));
    cluster.server = await startServer(cluster.proxy, cluster.dataDir);
    const results = await within(Promise.allSettled([...runs, ...late]), 120_000, "every run() to settle");
    const rejected = results.filter((r) => r.status === "rejected");
    assert.deepEqual(
      rejected.map((r) => String(r.reason)),
      [],
      "every run() succeeds",
    );
    const tasks = await settled(session, 60_000);
    assert.equal(tasks.length, n + 20, "no task was created twice");
    assert.deepEqual(executions.reruns(), [], "no task ran twice");
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("a control plane down past the client's patience: OUTCOME_UNKNOWN for created tasks, UNAVAILABLE for new ones", async () => {
    cluster = await startCluster(["n1"], { patienceMs: 2_000 });
    const executions = await registerCounting(cluster, "counted");
    const session = await cluster.client.createSession({ application: "counted" });
    const runs = Array.from({ length: 8 }, () => session.run("60000"));
    await waitFor("the tasks to start", () => executions.starts().size >= 4 || undefined);
    await killServer(cluster);
    const results = await within(Promise.allSettled(runs), 60_000, "the runs to give up");
    const ids = new Set<string>();
    for (const r of results) {
      assert.equal(r.status, "rejected");
      const err = (r as PromiseRejectedResult).reason as OutcomeUnknownError;
      assert.ok(err instanceof OutcomeUnknownError, String(err));
      assert.equal(err.code, ErrorCode.OutcomeUnknown);
      assert.equal(err.sessionId, session.id);
      assert.match(err.message, new RegExp(`${session.id}/${err.taskId}.*outcome is unknown`));
      ids.add(err.taskId);
    }
    assert.equal(ids.size, 8, "each names its own task");
    const never = await session.run("1").then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(never instanceof KilnError && never.code === ErrorCode.Unavailable, String(never));
    cluster.server = await startServer(cluster.proxy, cluster.dataDir);
    await session.close();
    await stopCluster(cluster);
    cluster = undefined;
  });

  it("a CreateTasks resent with the same idempotency key creates nothing twice, also after a restart", async () => {
    cluster = await startCluster([]);
    await registerCounting(cluster, "counted");
    const session = await cluster.client.createSession({ application: "counted" });
    const connection = createClusterTransport({ endpoint: cluster.endpoint });
    try {
      const api = createClient(kiln.Frontend, connection.transport);
      const inputs = [1, 2, 3].map((i) => new TextEncoder().encode(String(i)));
      const request = { sessionId: session.id, inputs, idempotencyKey: "batch-1" };
      const first = await api.createTasks(request);
      const again = await api.createTasks(request);
      assert.deepEqual([again.firstTaskId, again.count], [first.firstTaskId, first.count]);
      const other = await api.createTasks({ ...request, idempotencyKey: "batch-2" });
      assert.equal(other.firstTaskId, first.firstTaskId + 3n, "another key creates new tasks");
      await assert.rejects(
        api.createTasks({ ...request, inputs: inputs.slice(0, 2) }),
        /idempotency_key: was used .* batch of 3 tasks/,
      );
      await assert.rejects(
        api.createTasks({ ...request, idempotencyKey: "k".repeat(129) }),
        /idempotency_key: is 129 characters/,
      );
      await killServer(cluster);
      cluster.server = await startServer(cluster.proxy, cluster.dataDir);
      const afterRestart = await api.createTasks(request);
      assert.equal(afterRestart.firstTaskId, first.firstTaskId, "the key was stored with its tasks");
      const tasks: flame.Task[] = [];
      for await (const t of session.listTasks()) tasks.push(t);
      assert.equal(tasks.length, 6);
    } finally {
      connection.close();
    }
  });
});
