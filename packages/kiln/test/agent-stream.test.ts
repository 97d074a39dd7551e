import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { startAgent, type Agent } from "../src/agent/agent.js";
import { listenHttp2, type Listener } from "../src/net/http-server.js";
import { UnauthenticatedError } from "@kiln/protocol";
import { Credentials } from "../src/net/credentials.js";
import { requestGate } from "../src/net/request-gate.js";
import { AsyncQueue } from "@kiln/protocol";
import { untilChanged } from "../../../test/support/until.js";
import { alive, bindMessage, fixtureApp, pingApp, task, text } from "./support/agent-helpers.js";

const { ExecutorEvent } = kiln;

interface Received {
  connection: number;
  message: kiln.AgentMessage;
}

/**
 * A stand-in for the control plane's end of kiln.v1.Agent/Connect over real
 * h2c: records what the agent sends, answers Register with `registered()`,
 * and lets the test send control messages on the current connection.
 * Waits (`until`) end on the message they wait for.
 */
class StubControlPlane {
  readonly received: Received[] = [];
  connections = 0;
  endedByAgent = 0;
  registered: (r: kiln.Register) => MessageInitShape<typeof kiln.RegisteredSchema> = () => ({});
  /** Acknowledge completions as they arrive, as a control plane does after committing them. */
  acknowledging = true;
  private outbound: AsyncQueue<kiln.ControlMessage> | undefined;
  private listener: Listener | undefined;
  /** Emits "change" on every message received and every stream the agent ends. */
  private readonly changes = new EventEmitter();

  constructor(private readonly token?: string) {}

  get port(): number {
    return this.listener!.port;
  }

  async start(): Promise<void> {
    const impl: ServiceImpl<typeof kiln.Agent> = {
      connect: (requests) => {
        const connection = ++this.connections;
        const outbound = new AsyncQueue<kiln.ControlMessage>();
        this.outbound = outbound;
        void (async () => {
          try {
            for await (const message of requests) {
              this.received.push({ connection, message });
              this.changes.emit("change");
              if (message.kind.case === "register") {
                const value = create(kiln.RegisteredSchema, {
                  nodeName: message.kind.value.node?.name,
                  ...this.registered(message.kind.value),
                });
                outbound.push(create(kiln.ControlMessageSchema, { kind: { case: "registered", value } }));
              }
              if (message.kind.case === "completions" && this.acknowledging) {
                const throughSeq = message.kind.value.completions.reduce((max, c) => (c.seq > max ? c.seq : max), 0n);
                outbound.push(
                  create(kiln.ControlMessageSchema, { kind: { case: "completionsAck", value: { throughSeq } } }),
                );
              }
            }
            this.endedByAgent++;
            this.changes.emit("change");
          } catch {
            // The connection broke.
          }
          outbound.end();
        })();
        return outbound;
      },
    };
    const credentials = new Credentials({ adminToken: this.token });
    const handler = requestGate(
      {
        admit: (h) => (credentials.isAdmin(h.authorization) ? undefined : new UnauthenticatedError()),
        limitOf: () => undefined,
      },
      connectNodeAdapter({ routes: (router) => router.service(kiln.Agent, impl) }),
    );
    this.listener = await listenHttp2("127.0.0.1", 0, handler);
  }

  /** Fails the current stream, as a control plane that lost it would: the agent has to reconnect. */
  dropStream(): void {
    this.outbound?.fail(new Error("stub dropped the stream"));
  }

  /** Drops every connection and stops listening, as a crashed control plane would. */
  async stop(): Promise<void> {
    this.outbound?.fail(new Error("stub stopped"));
    await this.listener?.close();
  }

  send(kind: kiln.ControlMessage["kind"]): void {
    this.outbound!.push(create(kiln.ControlMessageSchema, { kind }));
  }

  messages<K extends kiln.AgentMessage["kind"]["case"]>(kind: K, connection?: number) {
    return this.received
      .filter((r) => r.message.kind.case === kind && (connection === undefined || r.connection === connection))
      .map((r) => r.message.kind.value as Extract<kiln.AgentMessage["kind"], { case: K }>["value"]);
  }

  reports(executorId: string): kiln.ExecutorReport[] {
    return this.messages("executors").flatMap((m) => m.reports.filter((r) => r.executorId === executorId));
  }

  completions(executorId?: string): kiln.Completion[] {
    return this.messages("completions").flatMap((m) =>
      m.completions.filter((c) => !executorId || c.executorId === executorId),
    );
  }

  /** Resolves with `check`'s first value, checked again at each message from the agent. */
  until<T>(check: () => T | undefined | false, ms: number, what: string | (() => string)): Promise<T> {
    return untilChanged(this.changes, check, ms, what);
  }

  waitForReport(executorId: string, event: kiln.ExecutorEvent, ms = 15_000): Promise<kiln.ExecutorReport> {
    return this.until(
      () => this.reports(executorId).find((r) => r.event === event),
      ms,
      () =>
        `${ExecutorEvent[event]} of ${executorId} (got ${JSON.stringify(this.reports(executorId).map((r) => [ExecutorEvent[r.event], r.message]))})`,
    );
  }
}

function tempWorkDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "kiln-agent-"));
}

describe("agent ↔ control plane stream", () => {
  const stub = new StubControlPlane();
  const logs: string[] = [];
  let agent: Agent;
  let workDir: string;

  before(async () => {
    workDir = tempWorkDir();
    stub.registered = () => ({ heartbeatIntervalMs: 100 });
    await stub.start();
    agent = await startAgent({
      endpoint: `http://127.0.0.1:${stub.port}`,
      name: "node-a",
      executors: 3,
      cpus: 2,
      memoryBytes: 2 ** 30,
      gpus: 0,
      workDir,
      log: (line) => logs.push(line),
    });
  });
  after(async () => {
    await agent?.close();
    await stub.stop();
    fs.rmSync(workDir, { recursive: true, force: true });
  });

  test("registers with its node description and sends heartbeats at the control plane's interval", async () => {
    assert.equal(agent.nodeName, "node-a");
    const [register] = stub.messages("register");
    assert.equal(register?.node?.name, "node-a");
    assert.equal(register?.node?.hostname, os.hostname());
    assert.equal(register?.node?.maxExecutors, 3);
    assert.deepEqual([register?.node?.capacity?.cpu, register?.node?.capacity?.memory], [2n, 2n ** 30n]);
    assert.deepEqual(register?.executors, []);
    await stub.until(() => stub.messages("heartbeat").length >= 3, 5_000, "3 heartbeats");
  });

  test("binds, runs a task batch and sends completions in batches", async () => {
    stub.send({ case: "bind", value: bindMessage("e-1", pingApp(), { concurrency: 64 }) });
    await stub.waitForReport("e-1", ExecutorEvent.BOUND);
    const tasks = Array.from({ length: 300 }, (_, i) => task("e-1", i + 1, ""));
    stub.send({ case: "tasks", value: create(kiln.TaskBatchSchema, { tasks }) });
    await stub.until(
      () => stub.completions("e-1").length >= 300,
      20_000,
      () => `300 completions (have ${stub.completions("e-1").length})`,
    );
    const completions = stub.completions("e-1");
    assert.equal(completions.length, 300);
    assert.ok(completions.every((c) => c.returnCode === 0 && c.sessionId === "s-1" && c.attempt === 1));
    assert.equal(new Set(completions.map((c) => c.taskId)).size, 300);
    const messages = stub.messages("completions").filter((m) => m.completions.some((c) => c.executorId === "e-1"));
    assert.ok(messages.length < 100, `300 completions came in ${messages.length} messages`);
  });

  test("reconnects after the control plane's stream is lost, reports live executors and honours Registered", async () => {
    stub.send({ case: "bind", value: bindMessage("e-2", pingApp()) });
    await stub.waitForReport("e-2", ExecutorEvent.BOUND);
    const long = JSON.stringify({ durationMs: 1_500 });
    stub.send({
      case: "tasks",
      value: create(kiln.TaskBatchSchema, { tasks: [1001, 1002, 1003].map((id) => task("e-1", id, long)) }),
    });
    // Sent after the long tasks: the agent handles control messages in order, so it holds them by its answer.
    const e2Pid = await pidOf("e-2");

    const before = stub.connections;
    const ref = (id: string) => create(kiln.TaskRefSchema, { sessionId: "s-1", taskId: id, attempt: 1 });
    stub.registered = () => ({ heartbeatIntervalMs: 100, stopExecutors: ["e-2"], forgetTasks: [ref("1003")] });
    stub.dropStream();
    await stub.until(
      () => stub.connections > before && stub.messages("register", stub.connections).length > 0,
      15_000,
      "the agent to reconnect",
    );

    const [register] = stub.messages("register", stub.connections);
    const live = new Map(register!.executors.map((e) => [e.executorId, e]));
    assert.deepEqual([...live.keys()].sort(), ["e-1", "e-2"]);
    assert.equal(live.get("e-1")?.sessionId, "s-1");
    assert.deepEqual(
      live
        .get("e-1")
        ?.tasks.map((t) => t.taskId)
        .sort(),
      ["1001", "1002", "1003"],
    );

    await stub.until(
      () => stub.completions("e-1").filter((c) => Number(c.taskId) > 1000).length >= 2,
      10_000,
      "the long tasks",
    );
    // What is under test is that nothing comes: 1003 ran alongside 1001 and 1002 and would have finished with them.
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(
      stub
        .completions("e-1")
        .filter((c) => Number(c.taskId) > 1000)
        .map((c) => c.taskId)
        .sort(),
      ["1001", "1002"],
      "1003 was forgotten",
    );

    const stopped = await stub.waitForReport("e-2", ExecutorEvent.UNBOUND);
    assert.match(stopped.message, /no longer keeps/);
    assert.ok(!alive(e2Pid), "the stopped executor's process is gone");
    assert.ok(
      logs.some((l) => l.includes("control plane stream lost")),
      logs.join("\n"),
    );
  });

  test("keeps a completion the control plane never acknowledged: reports its task held and resends it after reconnecting", async () => {
    stub.acknowledging = false;
    try {
      stub.send({ case: "tasks", value: create(kiln.TaskBatchSchema, { tasks: [task("e-1", 1500, "")] }) });
      const first = await stub.until(
        () => stub.completions("e-1").find((c) => c.taskId === "1500"),
        10_000,
        "task 1500's completion",
      );
      const before = stub.connections;
      stub.dropStream();
      await stub.until(
        () => stub.connections > before && stub.messages("completions", stub.connections).length > 0,
        15_000,
        "the agent to reconnect and resend",
      );
      const [register] = stub.messages("register", stub.connections);
      const e1 = register!.executors.find((e) => e.executorId === "e-1");
      assert.ok(
        e1?.tasks.some((t) => t.taskId === "1500"),
        "the unacknowledged task is reported as held",
      );
      const resent = stub.messages("completions", stub.connections).flatMap((m) => m.completions);
      assert.deepEqual(
        resent.map((c) => [c.taskId, c.seq]),
        [["1500", first.seq]],
      );
    } finally {
      stub.acknowledging = true;
    }
  });

  test("unbind stops the executor; no completion follows its UNBOUND", async () => {
    const pid = await pidOf("e-1");
    stub.send({ case: "unbind", value: create(kiln.UnbindSchema, { executorId: "e-1" }) });
    await stub.waitForReport("e-1", ExecutorEvent.UNBOUND);
    assert.ok(!alive(pid));
    const count = stub.completions("e-1").length;
    stub.send({ case: "tasks", value: create(kiln.TaskBatchSchema, { tasks: [task("e-1", 2000, "")] }) });
    // What is under test is that nothing comes (a kiln-ping task answers within milliseconds).
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(stub.completions("e-1").length, count);
  });

  test("close() unbinds every executor, reports it, and ends the stream", async () => {
    stub.send({ case: "bind", value: bindMessage("e-3", pingApp()) });
    await stub.waitForReport("e-3", ExecutorEvent.BOUND);
    const pid = await pidOf("e-3");
    const started = Date.now();
    await agent.close();
    assert.ok(Date.now() - started < 15_000);
    assert.ok(
      stub.reports("e-3").some((r) => r.event === ExecutorEvent.UNBOUND),
      "UNBOUND was sent before the stream ended",
    );
    await stub.until(() => stub.endedByAgent > 0, 5_000, "the agent to end its stream");
    assert.ok(!alive(pid));
  });

  /** The pid of an executor's kiln-ping process, from a task it runs. */
  async function pidOf(executorId: string): Promise<number> {
    const taskId = `pid-${Math.random()}`;
    stub.send({ case: "tasks", value: create(kiln.TaskBatchSchema, { tasks: [task(executorId, taskId, "")] }) });
    const c = await stub.until(
      () => stub.completions(executorId).find((x) => x.taskId === taskId),
      10_000,
      `a task on ${executorId}`,
    );
    return (JSON.parse(text(c.output)) as { pid: number }).pid;
  }
});

describe("agent and the cluster token", () => {
  const stub = new StubControlPlane("s3cret");
  const dirs: string[] = [];
  before(() => stub.start());
  after(async () => {
    await stub.stop();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  test("a wrong token makes startAgent fail with the reason; the right one registers", async () => {
    const endpoint = `http://127.0.0.1:${stub.port}`;
    const workDir = tempWorkDir();
    dirs.push(workDir);
    await assert.rejects(
      startAgent({ endpoint, token: "wrong", workDir, log: () => {} }),
      /refused this agent: .*invalid token/,
    );
    const agent = await startAgent({ endpoint, token: "s3cret", workDir, log: () => {} });
    try {
      assert.equal(stub.messages("register").length, 1);
    } finally {
      await agent.close();
    }
  });
});

describe("agent with a work dir too deep for socket paths", () => {
  const stub = new StubControlPlane();
  let root: string;
  before(async () => {
    root = tempWorkDir();
    await stub.start();
  });
  after(async () => {
    await stub.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("still binds: sockets go to a short directory", async () => {
    const workDir = path.join(root, "a-rather-long-directory-name".repeat(4));
    const agent = await startAgent({ endpoint: `http://127.0.0.1:${stub.port}`, workDir, log: () => {} });
    try {
      stub.send({ case: "bind", value: bindMessage("e-deep", fixtureApp("agent-test-service.ts")) });
      await stub.waitForReport("e-deep", ExecutorEvent.BOUND);
      stub.send({
        case: "tasks",
        value: create(kiln.TaskBatchSchema, { tasks: [task("e-deep", 1, "env:KILN_INSTANCE_ENDPOINT")] }),
      });
      const c = await stub.until(() => stub.completions("e-deep")[0], 10_000, "the task");
      const socketPath = text(c.output);
      assert.ok(socketPath.endsWith(".sock") && socketPath.length <= 100, socketPath);
      assert.ok(fs.existsSync(path.join(workDir, "logs", "e-deep.stderr.log")));
    } finally {
      await agent.close();
    }
    await stub.waitForReport("e-deep", ExecutorEvent.UNBOUND);
  });
});
