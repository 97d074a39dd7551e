import { create } from "@bufbuild/protobuf";
import type { AsyncQueue } from "@kiln/protocol";
import { flame, type kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SessionsFeed } from "../src/control/sessions-feed.js";
import type { SessionRecord } from "../src/control/sessions.js";
import { TaskBacklog } from "../src/control/task-backlog.js";
import { TaskQueue } from "../src/control/task-queue.js";

function record(id: string): SessionRecord {
  return {
    id,
    application: "app",
    spec: create(flame.SessionSpecSchema, { application: "app", resreq: { cpu: 1n, memory: 1n, gpu: 0 } }),
    resreq: { cpu: 1, memory: 1, gpu: 0 },
    state: flame.SessionState.Open,
    creationTime: 1,
    live: new Map(),
    backlog: new TaskBacklog(),
    taskCount: 0,
    seq: 0,
    pending: new TaskQueue(),
    counts: { pending: 0, running: 0, succeed: 0, failed: 0, cancelled: 0 },
    events: [],
    bindFailures: 0,
    nextBindAt: 0,
    unfittable: false,
  };
}

/** Takes the messages waiting in `queue` without waiting for more. */
async function take(queue: AsyncQueue<kiln.WatchSessionsResponse>): Promise<kiln.WatchSessionsResponse[]> {
  const taken: kiln.WatchSessionsResponse[] = [];
  const iterator = queue[Symbol.asyncIterator]();
  while (queue.size > 0) taken.push((await iterator.next()).value as kiln.WatchSessionsResponse);
  return taken;
}

const summary = (m: kiln.WatchSessionsResponse) => ({
  sessions: m.sessions.map((s) => [s.metadata?.id, s.status?.succeed, s.status?.events.map((e) => e.message)]),
  deleted: m.deletedSessionIds,
});

describe("the sessions feed", () => {
  it("starts with the sessions asked for, then sends each commit's changes, events once each", async () => {
    const feed = new SessionsFeed();
    const a = record("a");
    const b = record("b");
    a.events.push({ code: 1030, message: "before", time: 1 });
    const queue = feed.watch([a], { ids: new Set(["a"]), events: true, omitTaskChanges: false });
    const messages = await take(queue);
    a.counts.succeed = 1;
    feed.taskChanged(a);
    feed.taskChanged(b);
    feed.flush();
    messages.push(...(await take(queue)));
    a.events.push({ code: 1031, message: "after", time: 2 });
    feed.sessionChanged(a);
    feed.flush();
    messages.push(...(await take(queue)));
    assert.equal(messages[0]!.ready, true);
    assert.deepEqual(messages.map(summary), [
      { sessions: [["a", 0, ["before"]]], deleted: [] },
      { sessions: [["a", 1, []]], deleted: [] },
      { sessions: [["a", 1, ["after"]]], deleted: [] },
    ]);
  });

  it("merges changes into the message a slow reader has not taken yet", async () => {
    const feed = new SessionsFeed();
    const a = record("a");
    const b = record("b");
    const queue = feed.watch([], { ids: undefined, events: true, omitTaskChanges: false });
    for (let i = 1; i <= 3; i++) {
      a.counts.succeed = i;
      a.events.push({ code: 1020, message: `exit ${i}`, time: i });
      feed.sessionChanged(a);
      if (i === 2) feed.sessionChanged(b);
      feed.flush();
    }
    feed.sessionDeleted(b);
    feed.flush();
    const messages = await take(queue);
    assert.equal(messages.length, 2, "the snapshot, then one message holding every change since");
    assert.deepEqual(summary(messages[1]!), {
      sessions: [["a", 3, ["exit 1", "exit 2", "exit 3"]]],
      deleted: ["b"],
    });
  });

  it("with omitTaskChanges sends a session only for its own changes", async () => {
    const feed = new SessionsFeed();
    const a = record("a");
    const queue = feed.watch([a], { ids: undefined, events: false, omitTaskChanges: true });
    feed.taskChanged(a);
    feed.flush();
    assert.equal((await take(queue)).length, 1, "only the snapshot");
    feed.sessionChanged(a);
    feed.flush();
    assert.deepEqual((await take(queue)).map(summary), [{ sessions: [["a", 0, []]], deleted: [] }]);
  });
});
