/**
 * kiln.v1 ListTasks and ListSessions: pages in id order with a limit and a cursor, read from the store
 * merged with memory, over a real control plane.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { appSpec, startTestControlPlane, type TestControlPlane } from "./support/control-plane.js";

const { TaskState, SessionState } = flame;

describe("paged listing (kiln.v1 ListTasks, ListSessions)", () => {
  let t: TestControlPlane;
  before(async () => {
    // No agent: tasks stay pending, 100 in memory and the rest in the store; cancelled ones are stored.
    t = await startTestControlPlane({ pendingTasksInMemory: 100 });
    await t.frontend.registerApplication({ name: "app", application: appSpec({ command: "/bin/true" }) });
    await t.frontend.registerApplication({ name: "other", application: appSpec({ command: "/bin/true" }) });
  });
  after(() => t.close());

  const session = async (id: string, application = "app") =>
    t.frontend.createSession({ sessionId: id, session: create(flame.SessionSpecSchema, { application }) });

  it("pages every task once, in id order, across memory and the store", async () => {
    await session("tasks");
    const inputs = Array.from({ length: 1000 }, (_, i) => new TextEncoder().encode(`in-${i + 1}`));
    await t.kiln.createTasks({ sessionId: "tasks", inputs });
    await t.kiln.cancelTasks({ sessionId: "tasks", taskIds: ["3", "500", "999"] });
    const ids: number[] = [];
    let after = 0n;
    let pages = 0;
    do {
      const page = await t.kiln.listTasks({ sessionId: "tasks", afterTaskId: after, limit: 300 });
      assert.ok(page.tasks.length <= 300);
      ids.push(...page.tasks.map((task) => Number(task.metadata!.id)));
      if (pages === 0) assert.equal(new TextDecoder().decode(page.tasks[0]!.spec!.input), "in-1");
      after = page.nextAfterTaskId;
      pages++;
    } while (after !== 0n && pages < 10);
    assert.equal(pages, 4);
    assert.deepEqual(
      ids,
      Array.from({ length: 1000 }, (_, i) => i + 1),
    );
    const cancelled = await t.kiln.listTasks({ sessionId: "tasks", afterTaskId: 498n, limit: 3, omitData: true });
    assert.deepEqual(
      cancelled.tasks.map((task) => [task.metadata!.id, task.status!.state]),
      [
        ["499", TaskState.Pending],
        ["500", TaskState.Cancelled],
        ["501", TaskState.Pending],
      ],
    );
    assert.equal(cancelled.tasks[0]!.spec!.input, undefined, "omit_data leaves inputs out");
    const streamed: string[] = [];
    for await (const task of t.frontend.listTask({ sessionId: "tasks" })) streamed.push(task.metadata!.id);
    assert.equal(streamed.length, 1000, "flame.v1 ListTask still streams every task");
  });

  it("ends a page after about 4 MiB of inputs", async () => {
    await session("big");
    const mib = new Uint8Array(1024 * 1024).fill(7);
    await t.kiln.createTasks({ sessionId: "big", inputs: Array.from({ length: 8 }, () => mib) });
    const page = await t.kiln.listTasks({ sessionId: "big" });
    assert.equal(page.tasks.length, 5, "the page that crosses 4 MiB is the last");
    assert.equal(page.nextAfterTaskId, 5n);
  });

  it("pages sessions by id, of one application or state", async () => {
    for (const id of ["p-a", "p-b", "p-c", "p-d"]) await session(id, "other");
    await t.frontend.closeSession({ sessionId: "p-b" });
    const first = await t.kiln.listSessions({ application: "other", limit: 3 });
    assert.deepEqual(
      first.sessions.map((s) => s.metadata!.id),
      ["p-a", "p-b", "p-c"],
    );
    assert.equal(first.nextAfterSessionId, "p-c");
    const rest = await t.kiln.listSessions({ application: "other", afterSessionId: "p-c", limit: 3 });
    assert.deepEqual(
      rest.sessions.map((s) => s.metadata!.id),
      ["p-d"],
    );
    assert.equal(rest.nextAfterSessionId, "");
    const open = await t.kiln.listSessions({ application: "other", state: SessionState.Open });
    assert.deepEqual(
      open.sessions.map((s) => s.metadata!.id),
      ["p-a", "p-c", "p-d"],
    );
  });

  it("refuses a limit over 10,000, naming the field", async () => {
    for (const call of [
      () => t.kiln.listTasks({ sessionId: "tasks", limit: 10_001 }),
      () => t.kiln.listSessions({ limit: 10_001 }),
    ]) {
      await assert.rejects(call(), (err: unknown) => {
        assert.ok(err instanceof ConnectError);
        assert.equal(err.code, Code.InvalidArgument);
        assert.match(err.message, /limit.*10001.*over the maximum of 10000/);
        return true;
      });
    }
  });
});
