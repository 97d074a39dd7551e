/**
 * The control plane's working set over a real store: finished tasks leave memory once stored, are read
 * back from it, and start-up reads only what is unfinished (counts and change numbers come from the
 * session rows).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import * as path from "node:path";
import { create } from "@bufbuild/protobuf";
import { flame } from "@kiln/protocol/proto";
import { ApplicationRegistry } from "../src/control/applications.js";
import { SessionRegistry, type SessionRecord } from "../src/control/sessions.js";
import { GroupCommit } from "../src/control/store/group-commit.js";
import { SqliteStore } from "../src/control/store/sqlite-store.js";
import type { StoredTask } from "../src/control/store/store.js";
import { appSpec, tempDir } from "./support/control-plane.js";

const { TaskState } = flame;
const enc = (s: string) => new TextEncoder().encode(s);

async function openRegistry(file: string, pendingInMemory = 1000) {
  const store = SqliteStore.open(file);
  const commit = new GroupCommit(store);
  const apps = new ApplicationRegistry(commit, () => false);
  const sessions = new SessionRegistry(commit, store, apps, {
    pendingInMemory,
    retries: 3,
    maxTaskBytes: 1 << 20,
    defaultResreq: { cpu: 1, memory: 0, gpu: 0 },
  });
  const ws = await store.loadWorkingSet(pendingInMemory);
  apps.load(ws.applications);
  sessions.load(ws);
  return {
    store,
    commit,
    apps,
    sessions,
    ws,
    async close() {
      await commit.settle();
      await store.close();
    },
  };
}

async function all(tasks: AsyncIterable<StoredTask>): Promise<StoredTask[]> {
  const out: StoredTask[] = [];
  for await (const t of tasks) out.push(t);
  return out;
}

/** Dispatches and finishes the first `n` pending tasks of `s` (output "out-<id>"). */
function finishSome(sessions: SessionRegistry, s: SessionRecord, n: number): void {
  for (let i = 0; i < n; i++) {
    const t = sessions.nextPending(s)!;
    sessions.start(s, t, "e1", "host");
    sessions.finish(s, t, 0, enc(`out-${t.id}`), undefined, "host");
  }
}

describe("working set", () => {
  it("lets finished tasks go once stored, reads them back, and lists store and memory merged in id order", async () => {
    const r = await openRegistry(path.join(tempDir("ws"), "kiln.db"));
    try {
      r.apps.register("app", appSpec({ command: "/bin/true" }));
      const s = r.sessions.create("s1", create(flame.SessionSpecSchema, { application: "app" }));
      r.sessions.createTasks(
        "s1",
        Array.from({ length: 10 }, (_, i) => enc(`in-${i + 1}`)),
      );
      finishSome(r.sessions, s, 6);
      assert.equal(s.live.size, 10, "finished tasks stay in memory until their commit has landed");
      await r.commit.flushed();
      assert.deepEqual([...s.live.keys()], [7, 8, 9, 10], "only unfinished tasks are left in memory");

      const third = await r.sessions.findTask("s1", "3");
      assert.equal(third.state, TaskState.Succeed);
      assert.equal(new TextDecoder().decode(third.output), "out-3", "a finished task is read from the store");
      await assert.rejects(r.sessions.findTask("s1", "11"), /task "s1\/11" not found|not found/);
      await assert.rejects(r.sessions.findTask("s1", "0"), /not found/);

      // Task 7 finishes without a commit yet: memory is newer than the store.
      finishSome(r.sessions, s, 1);
      const listed = await all(r.sessions.tasksInOrder(s, { pageSize: 4 }));
      assert.deepEqual(
        listed.map((t) => t.id),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
      );
      assert.equal(listed[6]!.state, TaskState.Succeed, "task 7 comes from memory");
      const page = await all(r.sessions.tasksInOrder(s, { afterId: 4, limit: 3, pageSize: 2 }));
      assert.deepEqual(
        page.map((t) => t.id),
        [5, 6, 7],
      );
      const changed = await all(r.sessions.tasksInOrder(s, { changedAfter: listed[5]!.seq }));
      assert.deepEqual(
        changed.map((t) => t.id),
        [7],
        "only tasks changed after a sequence number",
      );
    } finally {
      await r.close();
    }
  });

  it("starts from unfinished tasks and session counts, and numbers changes on past the last one stored", async () => {
    const file = path.join(tempDir("ws-restart"), "kiln.db");
    const first = await openRegistry(file);
    let lastSeq: number;
    try {
      first.apps.register("app", appSpec({ command: "/bin/true" }));
      const s = first.sessions.create("s1", create(flame.SessionSpecSchema, { application: "app" }));
      first.sessions.createTasks(
        "s1",
        Array.from({ length: 50 }, () => enc("x")),
      );
      finishSome(first.sessions, s, 40);
      first.sessions.cancel("s1", ["41", "42"]);
      // Dispatched, not stored: its change number must still not be given out again after a restart.
      first.sessions.start(s, first.sessions.nextPending(s)!, "e1", "host");
      lastSeq = s.seq;
      await first.commit.flushed();
    } finally {
      await first.close();
    }
    const second = await openRegistry(file);
    try {
      assert.deepEqual(
        second.ws.tasks.map((t) => t.id),
        [43, 44, 45, 46, 47, 48, 49, 50],
        "start-up reads only unfinished tasks",
      );
      const s = second.sessions.require("s1");
      assert.deepEqual(s.counts, { pending: 8, running: 0, succeed: 40, failed: 0, cancelled: 2 });
      assert.equal(s.taskCount, 50);
      // Task 43 was created and dispatched in one turn, so it was stored Running: start-up requeues it, a change.
      assert.ok(s.seq >= lastSeq, "the change number goes on from the last one a watcher could have seen");
      const next = second.sessions.createTasks("s1", [enc("y")]);
      assert.equal(next, 51, "ids go on after the last task");
      assert.ok(s.live.get(51)!.seq > lastSeq);
      assert.equal((await all(second.sessions.tasksInOrder(s))).length, 51);
    } finally {
      await second.close();
    }
  });

  describe("a session's backlog: pending tasks past its share of memory wait in the store", () => {
    /** Takes every task the session will give, waiting for backlog reads between; returns the ids in order. */
    async function drainInOrder(sessions: SessionRegistry, s: SessionRecord): Promise<number[]> {
      const ids: number[] = [];
      for (let idle = 0; idle < 100 && s.counts.pending > 0;) {
        const t = sessions.nextPending(s);
        if (!t) {
          idle++;
          await new Promise(setImmediate);
          continue;
        }
        ids.push(t.id);
        sessions.start(s, t, "e1", "host");
        sessions.finish(s, t, 0, undefined, undefined, "host");
      }
      return ids;
    }

    it("keeps the share in memory and reads the rest back in id order as tasks are taken", async () => {
      const r = await openRegistry(path.join(tempDir("backlog"), "kiln.db"), 4);
      try {
        r.sessions.releaseRecovered();
        r.apps.register("app", appSpec({ command: "/bin/true" }));
        const s = r.sessions.create("s1", create(flame.SessionSpecSchema, { application: "app" }));
        r.sessions.createTasks(
          "s1",
          Array.from({ length: 7 }, () => enc("x")),
        );
        r.sessions.createTasks(
          "s1",
          Array.from({ length: 3 }, () => enc("y")),
        );
        assert.equal(s.live.size, 4);
        assert.equal(s.backlog.size, 6);
        assert.equal(s.counts.pending, 10);
        await r.commit.flushed();
        assert.deepEqual(await drainInOrder(r.sessions, s), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert.equal(s.backlog.size, 0);
        assert.equal((await r.sessions.findTask("s1", "9")).state, TaskState.Succeed);
      } finally {
        await r.close();
      }
    });

    it("cancels backlog tasks in the store, one or all, and tells watchers of each", async () => {
      const r = await openRegistry(path.join(tempDir("backlog-cancel"), "kiln.db"), 4);
      try {
        const changed: string[] = [];
        r.sessions.observer = {
          taskChanged: (_s, t) => changed.push(`${t.id}:${t.state}`),
          sessionChanged: () => {},
          sessionEnded: () => {},
          sessionDeleted: () => {},
          workAdded: () => {},
        };
        r.apps.register("app", appSpec({ command: "/bin/true" }));
        const s = r.sessions.create("s1", create(flame.SessionSpecSchema, { application: "app" }));
        r.sessions.createTasks(
          "s1",
          Array.from({ length: 10 }, () => enc("x")),
        );
        await r.commit.flushed();
        changed.length = 0;
        assert.equal(r.sessions.cancel("s1", ["7"]).cancelled, 1);
        assert.deepEqual(changed, [`7:${TaskState.Cancelled}`]);
        await r.commit.flushed();
        const seventh = await r.sessions.findTask("s1", "7");
        assert.equal(seventh.state, TaskState.Cancelled);
        assert.deepEqual(
          seventh.events.map((e) => e.code),
          [TaskState.Pending, TaskState.Cancelled],
          "the store appended the event",
        );
        assert.equal(seventh.seq, s.seq, "the change is numbered");
        r.sessions.close("s1");
        await r.commit.flushed();
        assert.deepEqual(s.counts, { pending: 0, running: 0, succeed: 0, failed: 0, cancelled: 10 });
        const states = (await all(r.sessions.tasksInOrder(s))).map((t) => t.state);
        assert.deepEqual(states, Array(10).fill(TaskState.Cancelled));
        assert.equal(changed.length, 10, "watchers heard of every task, the backlog's too");
      } finally {
        await r.close();
      }
    });

    it("starts with the share of unfinished tasks and the others as a backlog, released after recovery", async () => {
      const file = path.join(tempDir("backlog-restart"), "kiln.db");
      const first = await openRegistry(file, 1000);
      try {
        first.apps.register("app", appSpec({ command: "/bin/true" }));
        const s = first.sessions.create("s1", create(flame.SessionSpecSchema, { application: "app" }));
        first.sessions.createTasks(
          "s1",
          Array.from({ length: 10 }, () => enc("x")),
        );
        first.sessions.cancel("s1", ["6"]);
        await first.commit.flushed();
        assert.equal(s.live.size, 9);
      } finally {
        await first.close();
      }
      const second = await openRegistry(file, 4);
      try {
        assert.deepEqual(
          second.ws.tasks.map((t) => t.id),
          [1, 2, 3, 4],
        );
        assert.deepEqual(
          second.ws.backlog.map(({ from, to }) => [from, to]),
          [
            [5, 5],
            [7, 10],
          ],
        );
        const s = second.sessions.require("s1");
        assert.equal(s.counts.pending, 9);
        assert.deepEqual(await drainInOrder(second.sessions, s), [], "nothing is read back before recovery ends");
        second.sessions.releaseRecovered();
        assert.deepEqual(await drainInOrder(second.sessions, s), [1, 2, 3, 4, 5, 7, 8, 9, 10]);
      } finally {
        await second.close();
      }
    });
  });
});
