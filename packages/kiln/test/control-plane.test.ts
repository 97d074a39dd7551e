import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { FailedPreconditionError, ERROR_CODE_HEADER } from "@kiln/protocol";
import { createClusterTransport } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { deferred } from "../../../test/support/until.js";
import { within } from "../../../test/support/within.js";
import { startControlPlane } from "../src/control/server.js";
import { appSpec, startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";

const enc = (s: string) => new TextEncoder().encode(s);

async function rejects(p: Promise<unknown>, code: Code, fieldOrText: string, kilnCode?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `code of: ${err.message}`);
    assert.ok(err.rawMessage.includes(fieldOrText), `"${err.rawMessage}" should mention "${fieldOrText}"`);
    if (kilnCode) assert.equal(err.metadata.get(ERROR_CODE_HEADER), kilnCode);
    return true;
  });
}

function sessionSpec(init: Omit<Partial<flame.SessionSpec>, "$typeName"> = {}): flame.SessionSpec {
  return create(flame.SessionSpecSchema, { application: "app", ...init });
}

describe("control plane: applications", () => {
  let t: TestControlPlane;
  before(async () => (t = await startTestControlPlane()));
  after(() => t.close());

  it("registers kiln-ping at start", async () => {
    const app = await t.frontend.getApplication({ name: "kiln-ping" });
    assert.equal(app.metadata?.name, "kiln-ping");
    assert.ok(app.spec?.command);
  });

  it("registers, gets, lists, updates and unregisters", async () => {
    const res = await t.frontend.registerApplication({ name: "app-1", application: appSpec({ command: "/bin/true" }) });
    assert.equal(res.returnCode, 0);
    assert.equal((await t.frontend.getApplication({ name: "app-1" })).spec?.command, "/bin/true");
    await t.frontend.updateApplication({ name: "app-1", application: appSpec({ command: "/bin/false" }) });
    assert.equal((await t.frontend.getApplication({ name: "app-1" })).spec?.command, "/bin/false");
    const names = (await t.frontend.listApplication({})).applications.map((a) => a.metadata?.name);
    assert.ok(names.includes("app-1") && names.includes("kiln-ping"));
    await t.frontend.unregisterApplication({ name: "app-1" });
    await rejects(t.frontend.getApplication({ name: "app-1" }), Code.NotFound, "app-1");
  });

  for (const [name, rule] of [
    ["", "must not be empty"],
    [".hidden", 'must not start with "." or "-"'],
    ["-dash", 'must not start with "." or "-"'],
    ["a..b", 'must not contain ".."'],
    ["a/b", "may only contain"],
    ["a b", "may only contain"],
    ["x".repeat(254), "at most 253"],
  ] as const) {
    it(`rejects application name ${JSON.stringify(name.slice(0, 12))} (${rule})`, async () => {
      await rejects(t.frontend.registerApplication({ name, application: appSpec() }), Code.InvalidArgument, rule);
      const names = (await t.frontend.listApplication({})).applications.map((a) => a.metadata?.name);
      assert.ok(!names.includes(name));
    });
  }

  it("accepts a 253-character name", async () => {
    await t.frontend.registerApplication({ name: "y".repeat(253), application: appSpec() });
  });

  it("rejects a relative working directory, bad schemas, bad labels and a duplicate", async () => {
    await rejects(
      t.frontend.registerApplication({ name: "wd", application: appSpec({ workingDirectory: "rel/dir" }) }),
      Code.InvalidArgument,
      "application.working_directory",
    );
    await rejects(
      t.frontend.registerApplication({
        name: "sch",
        application: appSpec({ schema: create(flame.ApplicationSchemaSchema, { input: "{not json" }) }),
      }),
      Code.InvalidArgument,
      "application.schema.input",
    );
    await rejects(
      t.frontend.registerApplication({
        name: "sch",
        application: appSpec({ schema: create(flame.ApplicationSchemaSchema, { output: '{"type": "nope"}' }) }),
      }),
      Code.InvalidArgument,
      "application.schema.output",
    );
    await rejects(
      t.frontend.registerApplication({ name: "lbl", application: appSpec({ labels: ["kiln.concurrency=0"] }) }),
      Code.InvalidArgument,
      "kiln.concurrency",
    );
    await t.frontend.registerApplication({ name: "dup", application: appSpec() });
    await rejects(t.frontend.registerApplication({ name: "dup", application: appSpec() }), Code.AlreadyExists, "dup");
    const names = (await t.frontend.listApplication({})).applications.map((a) => a.metadata?.name);
    assert.ok(!names.includes("wd") && !names.includes("sch") && !names.includes("lbl"));
  });

  it("drains an application unregistered with open sessions (see application-drain.test.ts)", async () => {
    await t.frontend.registerApplication({ name: "busy", application: appSpec() });
    await t.frontend.createSession({ sessionId: "busy-1", session: sessionSpec({ application: "busy" }) });
    await t.frontend.unregisterApplication({ name: "busy" });
    await rejects(
      t.frontend.createSession({ sessionId: "busy-2", session: sessionSpec({ application: "busy" }) }),
      Code.InvalidArgument,
      'application "busy" is being unregistered',
      "FAILED_PRECONDITION",
    );
    await t.frontend.closeSession({ sessionId: "busy-1" });
    await rejects(t.frontend.getApplication({ name: "busy" }), Code.NotFound, "busy");
  });
});

describe("control plane: sessions and tasks", () => {
  let t: TestControlPlane;
  before(async () => {
    t = await startTestControlPlane({ maxTaskBytes: 1024, defaultResreq: "cpu=1,mem=2g" });
    await t.frontend.registerApplication({ name: "app", application: appSpec({ maxInstances: 4 }) });
  });
  after(() => t.close());

  it("generates <app>-<6 chars> ids and fills defaults", async () => {
    const s = await t.frontend.createSession({ sessionId: "", session: sessionSpec() });
    assert.match(s.metadata!.id, /^app-[A-Za-z0-9]{6}$/);
    assert.equal(s.spec?.maxInstances, 4, "absent max falls back to the application's");
    assert.equal(s.spec?.resreq?.cpu, 1n);
    assert.equal(s.spec?.resreq?.memory, 2n * 1024n ** 3n, "cluster default resreq, binary units");
    assert.equal(s.status?.state, flame.SessionState.Open);
  });

  it("fills only the resources a request leaves out with the cluster default", async () => {
    const resreq = (r: { cpu?: bigint; memory?: bigint; gpu?: number }) => create(flame.ResourceRequirementSchema, r);
    const gpuOnly = await t.frontend.createSession({
      sessionId: "",
      session: sessionSpec({ resreq: resreq({ gpu: 1 }) }),
    });
    assert.deepEqual(
      [gpuOnly.spec?.resreq?.cpu, gpuOnly.spec?.resreq?.memory, gpuOnly.spec?.resreq?.gpu],
      [1n, 2n * 1024n ** 3n, 1],
    );
    const zeroCpu = await t.frontend.createSession({
      sessionId: "",
      session: sessionSpec({ resreq: resreq({ cpu: 0n, gpu: 1 }) }),
    });
    assert.deepEqual(
      [zeroCpu.spec?.resreq?.cpu, zeroCpu.spec?.resreq?.memory, zeroCpu.spec?.resreq?.gpu],
      [0n, 2n * 1024n ** 3n, 1],
      "an explicit 0 stays 0",
    );
    await rejects(
      t.frontend.createSession({
        sessionId: "",
        session: sessionSpec({ resreq: resreq({ cpu: 0n, memory: 0n }) }),
      }),
      Code.InvalidArgument,
      "session.resreq",
    );
  });

  it("rejects min > max, an unknown application, a bad id and a duplicate", async () => {
    await rejects(
      t.frontend.createSession({ sessionId: "mm", session: sessionSpec({ minInstances: 5, maxInstances: 2 }) }),
      Code.InvalidArgument,
      "session.min_instances",
    );
    await rejects(
      t.frontend.createSession({ sessionId: "mm", session: sessionSpec({ minInstances: 5 }) }),
      Code.InvalidArgument,
      "max_instances 4",
    );
    await rejects(
      t.frontend.createSession({ sessionId: "u", session: sessionSpec({ application: "nope" }) }),
      Code.NotFound,
      "nope",
    );
    await rejects(
      t.frontend.createSession({ sessionId: "../x", session: sessionSpec() }),
      Code.InvalidArgument,
      "session_id",
    );
    await t.frontend.createSession({ sessionId: "dup-s", session: sessionSpec() });
    await rejects(
      t.frontend.createSession({ sessionId: "dup-s", session: sessionSpec() }),
      Code.AlreadyExists,
      "dup-s",
    );
    await rejects(t.frontend.getSession({ sessionId: "mm" }), Code.NotFound, "mm");
  });

  it("opens get-or-create and checks the spec of an existing session", async () => {
    const a = await t.frontend.openSession({ sessionId: "op", session: sessionSpec({ priority: 3 }) });
    const b = await t.frontend.openSession({ sessionId: "op", session: sessionSpec({ priority: 3 }) });
    assert.equal(a.metadata?.id, b.metadata?.id);
    await t.frontend.openSession({ sessionId: "op" });
    await rejects(
      t.frontend.openSession({ sessionId: "op", session: sessionSpec({ priority: 9 }) }),
      Code.InvalidArgument,
      "session.priority",
    );
    await rejects(t.frontend.openSession({ sessionId: "absent" }), Code.NotFound, "absent");
  });

  it("numbers tasks 1, 2, … and records events with ms timestamps", async () => {
    await t.frontend.createSession({ sessionId: "tasks", session: sessionSpec() });
    const one = await t.frontend.createTask({ task: { sessionId: "tasks", input: enc("a") } });
    assert.equal(one.metadata?.id, "1");
    const batch = await t.kiln.createTasks({ sessionId: "tasks", inputs: [enc("b"), enc("c"), enc("d")] });
    assert.equal(batch.firstTaskId, 2n);
    assert.equal(batch.count, 3);
    const task = await t.frontend.getTask({ sessionId: "tasks", taskId: "4" });
    assert.equal(new TextDecoder().decode(task.spec?.input), "d");
    assert.equal(task.status?.state, flame.TaskState.Pending);
    const ev = task.status!.events[0]!;
    assert.equal(ev.code, flame.TaskState.Pending);
    assert.equal(ev.message, "created", "every event has a message, the creation too");
    assert.ok(Math.abs(Number(ev.creationTime) - Date.now()) < 60_000, "creation_time is Unix ms");
    const listed: string[] = [];
    for await (const x of t.frontend.listTask({ sessionId: "tasks" })) listed.push(x.metadata!.id);
    assert.deepEqual(listed, ["1", "2", "3", "4"]);
    const s = await t.frontend.getSession({ sessionId: "tasks" });
    assert.equal(s.status?.pending, 4);
  });

  it("rejects an unknown task, an unknown session and an over-size payload, creating nothing", async () => {
    await t.frontend.createSession({ sessionId: "bad", session: sessionSpec() });
    await rejects(t.frontend.getTask({ sessionId: "bad", taskId: "7" }), Code.NotFound, "bad/7");
    await rejects(t.frontend.getTask({ sessionId: "bad", taskId: "x" }), Code.NotFound, "bad/x");
    await rejects(t.frontend.createTask({ task: { sessionId: "ghost" } }), Code.NotFound, "ghost");
    await rejects(
      t.frontend.createTask({ task: { sessionId: "bad", input: new Uint8Array(2048) } }),
      Code.InvalidArgument,
      "task.input",
    );
    await rejects(
      t.kiln.createTasks({ sessionId: "bad", inputs: [enc("ok"), new Uint8Array(2048)] }),
      Code.InvalidArgument,
      "inputs[1]",
    );
    assert.equal((await t.frontend.getSession({ sessionId: "bad" })).status?.pending, 0);
  });

  it("close cancels pending tasks and refuses new ones; watchers see every change", async () => {
    await t.frontend.createSession({ sessionId: "cl", session: sessionSpec() });
    await t.kiln.createTasks({ sessionId: "cl", inputs: [enc("1"), enc("2")] });
    const seen: string[] = [];
    let closedFlag = false;
    const ready = deferred();
    const watching = (async () => {
      for await (const msg of t.kiln.watchSession({ sessionId: "cl", snapshot: true })) {
        for (const u of msg.updates) seen.push(`${u.taskId}:${flame.TaskState[u.state]}`);
        if (msg.ready) ready.resolve();
        if (msg.sessionClosed) closedFlag = true;
      }
    })();
    await within(ready.promise, 10_000, "the watch's snapshot");
    const closed = await t.frontend.closeSession({ sessionId: "cl" });
    assert.equal(closed.status?.state, flame.SessionState.Closed);
    assert.equal(closed.status?.cancelled, 2);
    await watching;
    assert.deepEqual(seen, ["1:Pending", "2:Pending", "1:Cancelled", "2:Cancelled"]);
    assert.ok(closedFlag, "the stream says the session closed, then ends");
    await rejects(
      t.frontend.createTask({ task: { sessionId: "cl" } }),
      Code.InvalidArgument,
      "closed",
      "FAILED_PRECONDITION",
    );
    const deleted = await t.frontend.deleteSession({ sessionId: "cl" });
    assert.equal(deleted.metadata?.id, "cl");
    await rejects(t.frontend.getSession({ sessionId: "cl" }), Code.NotFound, "cl");
  });

  it("WatchTask streams a task until it is terminal", async () => {
    await t.frontend.createSession({ sessionId: "wt", session: sessionSpec() });
    await t.frontend.createTask({ task: { sessionId: "wt" } });
    const states: flame.TaskState[] = [];
    const watching = (async () => {
      for await (const task of t.frontend.watchTask({ sessionId: "wt", taskId: "1" })) {
        states.push(task.status!.state);
        // Cancelled once the watch has shown the task as it is.
        if (states.length === 1) await t.kiln.cancelTasks({ sessionId: "wt", taskIds: ["1"] });
      }
    })();
    await within(watching, 10_000, "WatchTask");
    assert.deepEqual(states, [flame.TaskState.Pending, flame.TaskState.Cancelled]);
  });
});

describe("control plane: transport and security", () => {
  it("serves JSON over HTTP/1.1 on the same port", async () => {
    const t = await startTestControlPlane();
    try {
      const res = await fetch(`${t.cp.httpEndpoint}/flame.v1.Frontend/GetApplication`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "kiln-ping" }),
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as { metadata: { name: string } };
      assert.equal(body.metadata.name, "kiln-ping");
    } finally {
      await t.close();
    }
  });

  it("survives garbage bytes on its sockets", async () => {
    const t = await startTestControlPlane();
    try {
      const garbage = [
        Buffer.from([0, 1, 2, 255, 254, 13, 10, 13, 10]),
        Buffer.from("PRI * HTTP/2.0\r\n\r\nXX garbage"),
      ];
      const ports = [t.cp.port, Number(new URL(t.cp.httpEndpoint).port)];
      for (const [bytes, port] of ports.flatMap((p) => garbage.map((g) => [g, p] as const))) {
        await new Promise<void>((resolve) => {
          const sock = net.connect(port, "127.0.0.1", () => sock.end(bytes));
          sock.on("error", () => resolve());
          sock.on("close", () => resolve());
          sock.resume();
          sock.setTimeout(5_000, () => sock.destroy());
        });
      }
      assert.equal((await t.frontend.getApplication({ name: "kiln-ping" })).metadata?.name, "kiln-ping");
    } finally {
      await t.close();
    }
  });

  it("requires the token on every API when one is set", async () => {
    const token = "s3cret-token";
    const dataDir = tempDir("tok");
    const withToken = await startTestControlPlane({ dataDir, token }, token);
    try {
      assert.ok(await withToken.frontend.getApplication({ name: "kiln-ping" }));
      for (const bad of [undefined, "wrong"]) {
        const { transport, close } = createClusterTransport({
          endpoint: withToken.cp.endpoint,
          ...(bad ? { token: bad } : {}),
        });
        try {
          await rejects(createClient(flame.Frontend, transport).listApplication({}), Code.Unauthenticated, "token");
          await rejects(
            createClient(kiln.Frontend, transport).createTasks({ sessionId: "x", inputs: [] }),
            Code.Unauthenticated,
            "token",
          );
        } finally {
          close();
        }
      }
    } finally {
      await withToken.close();
    }
  });

  it("refuses to listen beyond loopback without a token", async () => {
    await assert.rejects(
      startControlPlane({ dataDir: tempDir("lan"), host: "0.0.0.0", port: 0, log: () => {} }),
      /requires a token/,
    );
  });
});

describe("control plane: store", () => {
  it("brings back applications, sessions, tasks and events after a restart", async () => {
    const dataDir = tempDir("restart");
    const a = await startTestControlPlane({ dataDir });
    await a.frontend.registerApplication({ name: "keep", application: appSpec({ description: "kept" }) });
    await a.frontend.createSession({ sessionId: "keep-1", session: sessionSpec({ application: "keep", priority: 7 }) });
    await a.kiln.createTasks({ sessionId: "keep-1", inputs: Array.from({ length: 3000 }, (_, i) => enc(String(i))) });
    await a.kiln.cancelTasks({ sessionId: "keep-1", taskIds: ["3000"] });
    await a.close();

    const b = await startTestControlPlane({ dataDir });
    try {
      assert.equal((await b.frontend.getApplication({ name: "keep" })).spec?.description, "kept");
      const s = await b.frontend.getSession({ sessionId: "keep-1" });
      assert.equal(s.spec?.priority, 7);
      assert.equal(s.status?.pending, 2999);
      assert.equal(s.status?.cancelled, 1);
      const t = await b.frontend.getTask({ sessionId: "keep-1", taskId: "2999" });
      assert.equal(new TextDecoder().decode(t.spec?.input), "2998");
      const next = await b.frontend.createTask({ task: { sessionId: "keep-1" } });
      assert.equal(next.metadata?.id, "3001", "ids continue after a restart");
    } finally {
      await b.close();
    }
  });

  it("refuses a second control plane on a data dir in use, and lets the first go on", async () => {
    const dataDir = tempDir("shared");
    const a = await startTestControlPlane({ dataDir });
    try {
      await assert.rejects(startControlPlane({ dataDir, port: 0, log: () => {} }), (err: unknown) => {
        assert.ok(err instanceof FailedPreconditionError, String(err));
        assert.match(err.message, /kiln\.db is in use by another control plane/);
        return true;
      });
      await a.frontend.registerApplication({ name: "still-mine", application: appSpec({}) });
      assert.equal((await a.frontend.getApplication({ name: "still-mine" })).metadata?.name, "still-mine");
    } finally {
      await a.close();
    }
  });
});
