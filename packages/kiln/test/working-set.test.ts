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

async function openRegistry(file: string) {
  const store = SqliteStore.open(file);
  const commit = new GroupCommit(store);
  const apps = new ApplicationRegistry(commit, () => false);
  const sessions = new SessionRegistry(commit, store, apps, {
    retries: 3,
    maxTaskBytes: 1 << 20,
    defaultResreq: { cpu: 1, memory: 0, gpu: 0 },
  });
  const ws = await store.loadWorkingSet();
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
});
