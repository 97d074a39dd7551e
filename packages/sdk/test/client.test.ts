import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { startControlPlane, type ControlPlane } from "../../kiln/src/control/server.js";
import { generateSessionId, toApplicationSpec, toSessionSpec } from "../src/client/specs.js";
import { Batcher, chunk } from "../src/client/task-batcher.js";
import {
  connect,
  ErrorCode,
  FailedPreconditionError,
  ignoreNotFound,
  InvalidArgumentError,
  isNotFound,
  KilnError,
  TaskFailedError,
  type KilnClient,
  type TaskUpdate,
} from "../src/index.js";
import { createClusterTransport } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import { untilChanged } from "../../../test/support/until.js";
import { within } from "../../../test/support/within.js";

/** An empty config file, so the user's own ~/.kiln/config.yaml stays out of the tests. */
const EMPTY_CONFIG = "/dev/null";

const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function assertCode(code: string, field?: string) {
  return (e: unknown) => {
    assert.ok(e instanceof KilnError, `expected a KilnError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (field) assert.ok(e.message.includes(field), `"${e.message}" should name ${field}`);
    return true;
  };
}

/** Waits, on the session's watch stream, until `n` of its tasks are pending. */
async function waitForPending(client: KilnClient, sessionId: string, n: number): Promise<void> {
  const pending = new Set<string>();
  const stop = new AbortController();
  const watching = (async () => {
    for await (const updates of client
      .session(sessionId)
      .watch({ snapshot: true, omitOutput: true, signal: stop.signal })) {
      for (const u of updates) {
        if (u.state === flame.TaskState.Pending) pending.add(u.taskId);
        else pending.delete(u.taskId);
      }
      if (pending.size === n) return;
    }
  })();
  try {
    await within(watching, 10_000, `${n} pending tasks in session ${sessionId} (${pending.size} so far)`);
  } finally {
    stop.abort();
  }
}

describe("conversions", () => {
  test("ApplicationInit becomes a flame.ApplicationSpec", () => {
    const spec = toApplicationSpec({
      command: "/usr/bin/python3",
      arguments: ["-m", "svc"],
      environments: { A: "1", B: "two" },
      workingDirectory: "/srv",
      labels: ["x"],
      maxInstances: 3,
      delayReleaseSeconds: 30,
      shim: "wasm",
      url: "file:///pkg.tar.gz",
      schema: { input: '{"type":"string"}' },
    });
    assert.equal(spec.command, "/usr/bin/python3");
    assert.deepEqual(spec.arguments, ["-m", "svc"]);
    assert.deepEqual(
      spec.environments.map((e) => [e.name, e.value]),
      [
        ["A", "1"],
        ["B", "two"],
      ],
    );
    assert.equal(spec.workingDirectory, "/srv");
    assert.equal(spec.maxInstances, 3);
    assert.equal(spec.delayRelease, 30n);
    assert.equal(spec.shim, flame.Shim.Wasm);
    assert.equal(spec.schema?.input, '{"type":"string"}');
    assert.equal(spec.description, undefined, "unset stays unset");
    assert.equal(toApplicationSpec({}).shim, flame.Shim.Host);
  });

  test("a generated ApplicationSpec passes through unchanged", () => {
    const spec = create(flame.ApplicationSpecSchema, { command: "x", maxInstances: 2 });
    assert.equal(toApplicationSpec(spec), spec);
  });

  test("bad application fields are rejected by name", () => {
    assert.throws(() => toApplicationSpec({ maxInstances: -1 }), assertCode(ErrorCode.InvalidArgument, "maxInstances"));
    assert.throws(
      () => toApplicationSpec({ delayReleaseSeconds: 1.5 }),
      assertCode(ErrorCode.InvalidArgument, "delayReleaseSeconds"),
    );
    assert.throws(() => toApplicationSpec({ shim: "docker" as "host" }), assertCode(ErrorCode.InvalidArgument, "shim"));
  });

  test("SessionOptions become a flame.SessionSpec; resreq text is parsed client-side", () => {
    const spec = toSessionSpec({
      application: "app",
      commonData: "shared",
      minInstances: 1,
      maxInstances: 4,
      priority: 7,
      resreq: "cpu=2,mem=1g",
    });
    assert.equal(spec.application, "app");
    assert.equal(text(spec.commonData), "shared");
    assert.equal(spec.minInstances, 1);
    assert.equal(spec.maxInstances, 4);
    assert.equal(spec.priority, 7);
    assert.deepEqual([spec.resreq?.cpu, spec.resreq?.memory, spec.resreq?.gpu], [2n, 1024n ** 3n, undefined]);
    const gpuOnly = toSessionSpec({ application: "app", resreq: "gpu=1" }).resreq;
    assert.deepEqual(
      [gpuOnly?.cpu, gpuOnly?.memory, gpuOnly?.gpu],
      [undefined, undefined, 1],
      "resources left out stay unset, so the cluster default fills them",
    );
    const explicitZero = toSessionSpec({ application: "app", resreq: "cpu=0,gpu=1" }).resreq;
    assert.equal(explicitZero?.cpu, 0n, "an explicit 0 is sent as 0");
    const objectForm = toSessionSpec({ application: "app", resreq: { cpu: 1, memory: 512, gpu: 1 } });
    assert.deepEqual([objectForm.resreq?.cpu, objectForm.resreq?.memory, objectForm.resreq?.gpu], [1n, 512n, 1]);
    const bare = toSessionSpec({ application: "app" });
    assert.equal(bare.resreq, undefined, "absent resreq gets the cluster default server-side");
    assert.equal(bare.maxInstances, undefined, "absent max means unlimited");
  });

  test("bad session options are rejected by name before any request", () => {
    assert.throws(() => toSessionSpec({ application: "../app" }), assertCode(ErrorCode.InvalidArgument, "application"));
    assert.throws(
      () => toSessionSpec({ application: "a", resreq: "cpu=x" }),
      assertCode(ErrorCode.InvalidArgument, "resreq.cpu"),
    );
    assert.throws(
      () => toSessionSpec({ application: "a", resreq: { cpu: 1, memory: -1 } }),
      assertCode(ErrorCode.InvalidArgument, "resreq.memory"),
    );
    assert.throws(
      () => toSessionSpec({ application: "a", minInstances: 5, maxInstances: 2 }),
      assertCode(ErrorCode.InvalidArgument, "minInstances"),
    );
    assert.throws(() => toSessionSpec({ application: "a", priority: 2 ** 32 }), assertCode(ErrorCode.InvalidArgument));
  });

  test("generated session ids are <app>-<6 letters/digits> and differ", () => {
    const ids = new Set(Array.from({ length: 50 }, () => generateSessionId("my-app")));
    for (const id of ids) assert.match(id, /^my-app-[A-Za-z0-9]{6}$/);
    assert.ok(ids.size > 45);
  });
});

describe("batching", () => {
  const limits = { maxItems: 3, maxBytes: 10, windowMs: 1 };
  const size = (s: string) => s.length;

  test("chunk keeps order and respects item and byte limits; an oversize item goes alone", () => {
    assert.deepEqual(chunk(["a", "b", "c", "d"], size, limits), [["a", "b", "c"], ["d"]]);
    assert.deepEqual(chunk(["aaaaaa", "bbbbbb", "c"], size, limits), [["aaaaaa"], ["bbbbbb", "c"]]);
    assert.deepEqual(chunk(["x".repeat(20), "y"], size, limits), [["x".repeat(20)], ["y"]]);
    assert.deepEqual(chunk([], size, limits), []);
  });

  test("items added in one tick go out together; later ones wait for the send in flight", async () => {
    const sent: string[][] = [];
    const sends = new EventEmitter();
    let finishFirst!: () => void;
    const firstDone = new Promise<void>((r) => (finishFirst = r));
    const batcher = new Batcher<string>(
      async (batch) => {
        sent.push(batch);
        sends.emit("change");
        if (sent.length === 1) await firstDone;
      },
      size,
      { maxItems: 100, maxBytes: 1000, windowMs: 1 },
    );
    batcher.add("a");
    batcher.add("b");
    await untilChanged(sends, () => sent.length === 1, 5_000, "the first send");
    assert.deepEqual(sent, [["a", "b"]]);
    batcher.add("c");
    batcher.add("d");
    // What is under test is that nothing goes out meanwhile: 20 windows pass while the first send is in flight.
    await sleep(20);
    assert.equal(sent.length, 1, "one send at a time");
    finishFirst();
    await untilChanged(sends, () => sent.length === 2, 5_000, "the second send");
    assert.deepEqual(sent, [
      ["a", "b"],
      ["c", "d"],
    ]);
  });

  test("a full batch is sent without waiting for the window", async () => {
    const sent: string[][] = [];
    const sends = new EventEmitter();
    const batcher = new Batcher<string>(
      async (batch) => {
        sent.push(batch);
        sends.emit("change");
      },
      size,
      { maxItems: 2, maxBytes: 1000, windowMs: 60_000 },
    );
    batcher.add("a");
    batcher.add("b");
    batcher.add("c");
    batcher.add("d");
    await untilChanged(sends, () => sent.length >= 2, 5_000, "full batches");
    assert.deepEqual(sent, [
      ["a", "b"],
      ["c", "d"],
    ]);
  });
});

describe("client against a server that stops answering SubmitTasks", () => {
  test("run() fails with TimeoutError after requestTimeoutMs instead of hanging", async () => {
    // Watches are answered (ready), task creation never is.
    const server = http2.createServer(
      connectNodeAdapter({
        routes: (router) =>
          router.service(kiln.Frontend, {
            async *watchSession(_req, ctx) {
              yield create(kiln.WatchSessionResponseSchema, { ready: true });
              await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
            },
            async *submitTasks(requests) {
              for await (const request of requests) void request;
            },
          }),
      }),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const client = await connect({ endpoint, requestTimeoutMs: 300, configPath: EMPTY_CONFIG });
    try {
      const session = client.session("silent");
      const first = session.run("a");
      const second = session.run("b");
      for (const call of [first, second])
        await assert.rejects(within(call, 10_000, "run()"), assertCode(ErrorCode.DeadlineExceeded, "SubmitTasks"));
    } finally {
      client.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("client against a control plane", () => {
  let dataDir: string;
  let cp: ControlPlane;
  let client: KilnClient;

  before(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-sdk-client-"));
    cp = await startControlPlane({ dataDir, port: 0, log: () => undefined });
    client = await connect({ endpoint: cp.endpoint, configPath: EMPTY_CONFIG });
    await client.registerApplication("app", { command: "/bin/true", description: "test app", maxInstances: 4 });
  });

  after(async () => {
    client?.close();
    await cp?.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  test("applications: register, get, list, update, unregister", async () => {
    await client.registerApplication("tmp-app", {
      command: "/usr/bin/env",
      arguments: ["node"],
      environments: { MODE: "test" },
      delayReleaseSeconds: 5,
    });
    const app = await client.getApplication("tmp-app");
    assert.equal(app.metadata?.name, "tmp-app");
    assert.equal(app.spec?.command, "/usr/bin/env");
    assert.equal(app.spec?.delayRelease, 5n);
    assert.deepEqual(
      app.spec?.environments.map((e) => `${e.name}=${e.value}`),
      ["MODE=test"],
    );
    const names = (await client.listApplications()).map((a) => a.metadata?.name);
    assert.ok(names.includes("tmp-app") && names.includes("app"), names.join(","));
    await client.updateApplication("tmp-app", { command: "/bin/sh" });
    assert.equal((await client.getApplication("tmp-app")).spec?.command, "/bin/sh");
    await client.unregisterApplication("tmp-app");
    await assert.rejects(client.getApplication("tmp-app"), assertCode(ErrorCode.NotFound, "tmp-app"));
  });

  test("errors carry stable codes: unknown app, duplicate, invalid ids", async () => {
    await assert.rejects(client.getApplication("nope"), assertCode(ErrorCode.NotFound));
    // A server's NOT_FOUND is a plain KilnError: isNotFound and ignoreNotFound go by the code.
    assert.equal(await client.getApplication("nope").catch(ignoreNotFound), undefined);
    assert.ok(isNotFound(await client.getApplication("nope").catch((e: unknown) => e)));
    const refused = await client.createSession({ application: "" }).catch((e: unknown) => e);
    assert.ok(refused instanceof KilnError && !isNotFound(refused));
    await assert.rejects(Promise.reject(refused).catch(ignoreNotFound), (e) => e === refused);
    await assert.rejects(client.createSession({ application: "nope" }), assertCode(ErrorCode.NotFound, "nope"));
    await assert.rejects(
      client.registerApplication("app", { command: "/bin/true" }),
      assertCode(ErrorCode.AlreadyExists),
    );
    // Caught client-side, naming the field.
    await assert.rejects(client.createSession({ application: "app", id: "../x" }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.equal(e.field, "id");
      return true;
    });
    await assert.rejects(client.openSession("a b"), assertCode(ErrorCode.InvalidArgument, "id"));
    await assert.rejects(connect({ endpoint: client.endpoint, patienceMs: -1 }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.equal(e.field, "patienceMs");
      return true;
    });
    // And by the server.
    await assert.rejects(
      client.registerApplication("rel", { workingDirectory: "relative/dir" }),
      assertCode(ErrorCode.InvalidArgument, "working_directory"),
    );
  });

  test("sessions: generated ids, get, list, open, close, delete", async () => {
    const session = await client.createSession({ application: "app", priority: 2, resreq: "cpu=1,mem=256m" });
    assert.match(session.id, /^app-[A-Za-z0-9]{6}$/);
    const info = await session.info();
    assert.equal(info.metadata?.id, session.id);
    assert.equal(info.spec?.priority, 2);
    assert.equal(info.spec?.resreq?.memory, 256n * 1024n ** 2n);
    assert.ok((await client.listSessions()).some((s) => s.metadata?.id === session.id));

    const opened = await client.openSession(session.id);
    assert.equal(opened.id, session.id);
    const created = await client.openSession("opened-or-created", { application: "app" });
    assert.equal((await created.info()).spec?.application, "app");
    await assert.rejects(client.openSession("absent"), assertCode(ErrorCode.NotFound));

    const closed = await session.close();
    assert.equal(closed.status?.state, flame.SessionState.Closed);
    const deleted = await client.deleteSession(session.id);
    assert.equal(deleted.metadata?.id, session.id);
    await assert.rejects(client.getSession(session.id), assertCode(ErrorCode.NotFound));
  });

  test("tasks: createTask and createTasks give consecutive ids; getTask and listTasks read them back", async () => {
    const session = await client.createSession({ application: "app", id: "tasks" });
    const first = await session.createTask("zero");
    assert.equal(first.metadata?.id, "1");
    assert.deepEqual(await session.createTasks(["a", "b", "c"]), ["2", "3", "4"]);
    assert.deepEqual(await session.createTasks([new Uint8Array([1, 2])]), ["5"]);
    const task = await session.getTask("3");
    assert.equal(text(task.spec?.input), "b");
    assert.equal(task.status?.state, flame.TaskState.Pending);
    const listed: string[] = [];
    for await (const t of session.listTasks()) listed.push(`${t.metadata?.id}:${text(t.spec?.input)}`);
    assert.deepEqual(listed.slice(0, 4), ["1:zero", "2:a", "3:b", "4:c"]);
    assert.equal(listed.length, 5);
    await assert.rejects(session.getTask("99"), assertCode(ErrorCode.NotFound));
  });

  test("watch: a snapshot lists existing tasks, then changes arrive until the session closes", async () => {
    const session = await client.createSession({ application: "app", id: "watched" });
    await session.createTasks(["a", "b"]);
    const batches: TaskUpdate[][] = [];
    const arrivals = new EventEmitter();
    const watching = (async () => {
      for await (const updates of session.watch({ snapshot: true, omitOutput: true })) {
        batches.push(updates);
        arrivals.emit("change");
      }
    })();
    await untilChanged(arrivals, () => batches.length > 0, 5_000, "the snapshot");
    assert.deepEqual(
      batches[0]!.map((u) => [u.sessionId, u.taskId, u.state]),
      [
        ["watched", "1", flame.TaskState.Pending],
        ["watched", "2", flame.TaskState.Pending],
      ],
    );
    assert.equal(await session.cancel(["2"]), 1);
    await session.close();
    await within(watching, 10_000, "the watch after close");
    const seen = batches.flat().map((u) => `${u.taskId}:${flame.TaskState[u.state]}`);
    assert.deepEqual(seen, ["1:Pending", "2:Pending", "2:Cancelled", "1:Cancelled"]);
    assert.equal(
      batches.flat().find((u) => u.taskId === "1" && u.state === flame.TaskState.Cancelled)?.message,
      "session closed",
    );
  });

  test("watch ends quietly when its signal aborts", async () => {
    const session = await client.createSession({ application: "app", id: "aborted-watch" });
    await session.createTasks(["x"]);
    const controller = new AbortController();
    let batches = 0;
    const watching = (async () => {
      // Aborted once the snapshot has come: on a live stream, not before it opened.
      for await (const _ of session.watch({ snapshot: true, signal: controller.signal })) {
        batches++;
        controller.abort();
      }
    })();
    await within(watching, 5_000, "the aborted watch");
    assert.equal(batches, 1);
  });

  test("watchTask follows one task to its terminal state", async () => {
    const session = await client.createSession({ application: "app", id: "watch-one" });
    const [id] = await session.createTasks(["x"]);
    const states: flame.TaskState[] = [];
    const watching = (async () => {
      for await (const t of session.watchTask(id!)) {
        states.push(t.status!.state);
        // Cancelled once the watch has shown the task as it is.
        if (states.length === 1) await session.cancel([id!]);
      }
    })();
    await within(watching, 5_000, "watchTask");
    assert.deepEqual(states, [flame.TaskState.Pending, flame.TaskState.Cancelled]);
  });

  test("watchTask throws TimeoutError when the task does not finish in time", async () => {
    const session = await client.createSession({ application: "app", id: "watch-timeout" });
    const [id] = await session.createTasks(["x"]);
    await assert.rejects(
      (async () => {
        for await (const _ of session.watchTask(id!, { timeoutMs: 200 })) {
          /* stays pending */
        }
      })(),
      assertCode(ErrorCode.DeadlineExceeded, "timed out after 200 ms"),
    );
  });

  test("run(): thousands of calls become consecutive tasks; closing the session rejects them as cancelled", async () => {
    const session = await client.createSession({ application: "app", id: "many-runs" });
    const n = 3000;
    const runs = Array.from({ length: n }, (_, i) => session.run(`input-${i}`));
    const outcomes = Promise.allSettled(runs);
    await waitForPending(client, session.id, n);

    // Calls made in one tick keep their order as consecutive ids.
    const task = await session.getTask("1234");
    assert.equal(text(task.spec?.input), "input-1233");

    await session.close();
    const settled = await within(outcomes, 20_000, "run() after close");
    const ids = new Set<string>();
    for (const r of settled) {
      assert.equal(r.status, "rejected");
      const e = (r as PromiseRejectedResult).reason as unknown;
      assert.ok(e instanceof TaskFailedError, String(e));
      assert.equal(e.code, ErrorCode.TaskCancelled);
      assert.equal(e.sessionId, "many-runs");
      assert.ok(e.message.includes("session closed"), e.message);
      ids.add(e.taskId);
    }
    assert.equal(ids.size, n, "each call has its own task");
    assert.ok(ids.has("1") && ids.has(String(n)));

    // A closed session takes no more tasks.
    await assert.rejects(
      session.run("late"),
      (e: unknown) => e instanceof FailedPreconditionError || assertCode(ErrorCode.FailedPrecondition)(e),
    );
  });

  test("SubmitTasks answers every request in order on one stream; a refused one is an answer, not the end", async () => {
    const session = await client.createSession({ application: "app", id: "submitted" });
    const closed = await client.createSession({ application: "app", id: "submitted-closed" });
    await closed.close();
    const { transport, close } = createClusterTransport({ endpoint: cp.endpoint });
    const requests = [
      { sessionId: session.id, inputs: [new Uint8Array([1]), new Uint8Array([2])] },
      { sessionId: "no-such-session", inputs: [new Uint8Array([3])] },
      { sessionId: closed.id, inputs: [new Uint8Array([4])] },
      { sessionId: session.id, inputs: [new Uint8Array([5])] },
    ].map((r) => create(kiln.CreateTasksRequestSchema, r));
    async function* send() {
      yield* requests;
    }
    try {
      const answers: kiln.SubmitTasksResponse[] = [];
      for await (const answer of createClient(kiln.Frontend, transport).submitTasks(send(), { timeoutMs: 10_000 }))
        answers.push(answer);
      assert.equal(answers.length, 4);
      assert.deepEqual([answers[0]!.firstTaskId, answers[0]!.count, answers[0]!.error], [1n, 2, undefined]);
      assert.equal(answers[1]!.error?.code, ErrorCode.NotFound);
      assert.match(answers[1]!.error?.message ?? "", /no-such-session/);
      assert.equal(answers[2]!.error?.code, ErrorCode.FailedPrecondition);
      assert.match(answers[2]!.error?.message ?? "", /submitted-closed/);
      assert.deepEqual([answers[3]!.firstTaskId, answers[3]!.count, answers[3]!.error], [3n, 1, undefined]);
      await waitForPending(client, session.id, 3);
    } finally {
      close();
    }
  });

  test("run() with a small and a large (over 1 MiB, sent unary) input: both tasks exist and settle", async () => {
    const session = await client.createSession({ application: "app", id: "sizes" });
    // Settled into values at once, so the rejections are handled when they happen.
    const small = session.run("small").then(
      () => undefined,
      (e: unknown) => e,
    );
    const large = session.run(new Uint8Array(2 * 1024 * 1024).fill(7)).then(
      () => undefined,
      (e: unknown) => e,
    );
    await waitForPending(client, session.id, 2);
    const sizes: number[] = [];
    for await (const t of session.listTasks()) sizes.push(t.spec?.input?.byteLength ?? 0);
    assert.deepEqual(
      sizes.sort((a, b) => a - b),
      [5, 2 * 1024 * 1024],
    );
    assert.equal(await session.cancel(), 2);
    assertCode(ErrorCode.TaskCancelled)(await within(small, 10_000, "small run()"));
    assertCode(ErrorCode.TaskCancelled)(await within(large, 10_000, "large run()"));
  });

  test("invoke() reports each state change and resolves with the terminal one", async () => {
    const session = await client.createSession({ application: "app", id: "invoked" });
    const updates: TaskUpdate[] = [];
    const done = session.invoke(new Uint8Array([7]), (u) => updates.push(u));
    await waitForPending(client, session.id, 1);
    assert.equal(await session.cancel(), 1);
    const final = await within(done, 10_000, "invoke()");
    assert.equal(final.state, flame.TaskState.Cancelled);
    assert.equal(final.taskId, "1");
    assert.equal(final.message, "cancelled by request");
    // The Pending update races the CreateTasks response; it must not be lost either way.
    assert.deepEqual(
      updates.map((u) => u.state),
      [flame.TaskState.Pending, flame.TaskState.Cancelled],
    );
  });

  test("run() on a deleted session fails with NotFound", async () => {
    const session = await client.createSession({ application: "app", id: "short-lived" });
    await session.close();
    await client.deleteSession(session.id);
    await assert.rejects(within(session.run("x"), 10_000, "run()"), assertCode(ErrorCode.NotFound));
  });

  test("the watch stream survives a control-plane restart and settles from the snapshot", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-sdk-restart-"));
    let server = await startControlPlane({ dataDir: dir, port: 0, log: () => undefined });
    const port = server.port;
    const c = await connect({ endpoint: server.endpoint, configPath: EMPTY_CONFIG });
    try {
      await c.registerApplication("app", { command: "/bin/true" });
      const session = await c.createSession({ application: "app", id: "survivor" });
      const pending = Promise.allSettled([session.run("a"), session.run("b")]);
      await waitForPending(c, session.id, 2);
      await server.close();
      // The JSON port is the kernel's pick again: the one next to `port` may be anyone's.
      server = await startControlPlane({ dataDir: dir, port, httpPort: 0, log: () => undefined });
      // Closed by another client: `c` may not have read the old server's goodbye yet, and a unary call
      // is not retried; what is under test is `c`'s watch stream.
      const other = await connect({ endpoint: server.endpoint, configPath: EMPTY_CONFIG });
      try {
        await other.closeSession(session.id);
      } finally {
        other.close();
      }
      const settled = await within(pending, 15_000, "run() across a restart");
      for (const r of settled) assert.ok(r.status === "rejected" && r.reason instanceof TaskFailedError, String(r));
    } finally {
      c.close();
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("closing the client rejects pending run() calls and later calls", async () => {
    const c = await connect({ endpoint: cp.endpoint, configPath: EMPTY_CONFIG });
    const session = await c.createSession({ application: "app", id: "client-closed" });
    const pending = session.run("x");
    await waitForPending(c, session.id, 1);
    c.close();
    await assert.rejects(within(pending, 5_000, "run() after client close"), assertCode(ErrorCode.Cancelled, "closed"));
    await assert.rejects(c.listSessions(), assertCode(ErrorCode.Cancelled, "closed"));
    await assert.rejects(session.run("y"), assertCode(ErrorCode.Cancelled, "closed"));
  });

  test("nodes and executors list (empty without agents); an unknown node is NotFound", async () => {
    assert.deepEqual(await client.listNodes(), []);
    assert.deepEqual(await client.listExecutors(), []);
    await assert.rejects(client.getNode("ghost"), assertCode(ErrorCode.NotFound));
  });
});
