import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";
import { untilDirChanges } from "../../../test/support/until.js";
import Database from "better-sqlite3";
import { startAgent } from "../src/agent/agent.js";
import { resolveConfig } from "../src/control/config.js";
import { MIGRATIONS } from "../src/control/store/sqlite-migrations.js";
import { enc } from "./support/agent-helpers.js";
import { pingInput } from "./support/ping-app.js";
import { appSpec, startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";

const SESSIONS = 4;
const TASKS_PER_SESSION = 1_000;
const INPUT_BYTES = 8 * 1024;
const HOUR_MS = 3_600_000;

/** kiln.db plus its WAL, bytes. */
function storeBytes(dataDir: string): number {
  const size = (f: string) => (fs.existsSync(f) ? fs.statSync(f).size : 0);
  const db = path.join(dataDir, "kiln.db");
  return size(db) + size(`${db}-wal`);
}

/** Registers an app and fills SESSIONS sessions with tasks of INPUT_BYTES each (about 32 MB in all); returns their ids. */
async function fillSessions(t: TestControlPlane, prefix: string): Promise<string[]> {
  await t.frontend.registerApplication({ name: "app", application: appSpec({ command: "/bin/true" }) });
  const ids: string[] = [];
  for (let i = 0; i < SESSIONS; i++) {
    const id = `${prefix}-${i}`;
    await t.frontend.createSession({ sessionId: id, session: create(flame.SessionSpecSchema, { application: "app" }) });
    const inputs = Array.from({ length: TASKS_PER_SESSION }, (_, n) => new Uint8Array(INPUT_BYTES).fill(n % 251));
    for (let at = 0; at < inputs.length; at += 250)
      await t.kiln.createTasks({ sessionId: id, inputs: inputs.slice(at, at + 250) });
    ids.push(id);
  }
  return ids;
}

async function isGone(t: TestControlPlane, id: string): Promise<boolean> {
  try {
    await t.frontend.getSession({ sessionId: id });
    return false;
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.NotFound) return true;
    throw err;
  }
}

describe("retention of closed sessions", () => {
  it("with retention 0, deletes closed sessions at once and the db and WAL shrink back", async () => {
    const t = await startTestControlPlane({ retentionMs: 0 });
    try {
      const empty = storeBytes(t.dataDir);
      const ids = await fillSessions(t, "gone");
      const full = storeBytes(t.dataDir);
      assert.ok(full > SESSIONS * TASKS_PER_SESSION * INPUT_BYTES, `the store holds the inputs (${full} bytes)`);
      await t.frontend.createSession({
        sessionId: "still-open",
        session: create(flame.SessionSpecSchema, { application: "app" }),
      });
      for (const id of ids) await t.frontend.closeSession({ sessionId: id });
      const limit = empty + 4 * 1024 * 1024;
      await untilDirChanges(
        t.dataDir,
        () => storeBytes(t.dataDir) < limit,
        60_000,
        () => `the store to shrink below ${limit} bytes (now ${storeBytes(t.dataDir)}, full ${full})`,
      );
      for (const id of ids) assert.equal(await isGone(t, id), true, `${id} is deleted`);
      assert.equal(await isGone(t, "still-open"), false, "an open session is kept");
    } finally {
      await t.close();
    }
  });

  it("keeps closed sessions for the retention, and deletes those past it when it starts", async () => {
    const dataDir = tempDir("retention");
    const first = await startTestControlPlane({ dataDir, retentionMs: HOUR_MS });
    let ids: string[];
    try {
      ids = await fillSessions(first, "old");
      for (const id of ids) await first.frontend.closeSession({ sessionId: id });
      for (const id of ids) assert.equal(await isGone(first, id), false, `${id} is kept within the retention`);
    } finally {
      await first.close();
    }
    const full = storeBytes(dataDir);
    const second = await startTestControlPlane({ dataDir, retentionMs: 0 });
    try {
      await untilDirChanges(
        dataDir,
        () => storeBytes(dataDir) < full / 4,
        60_000,
        () => `the store to shrink below a quarter of ${full} bytes (now ${storeBytes(dataDir)})`,
      );
      for (const id of ids)
        assert.equal(await isGone(second, id), true, `${id}, past the retention at start, is deleted`);
    } finally {
      await second.close();
    }
  });

  it("deletes a closed session whose task still runs only once that task has ended", async () => {
    const t = await startTestControlPlane({ retentionMs: 0 });
    const agent = await startAgent({ endpoint: t.cp.endpoint, workDir: tempDir("retention-agent"), executors: 1 });
    const watch = new AbortController();
    try {
      const spec = create(flame.SessionSpecSchema, { application: "kiln-ping" });
      await t.frontend.createSession({ sessionId: "busy", session: spec });
      const changes = t.kiln.watchSessions({ sessionIds: ["busy"] }, { signal: watch.signal, timeoutMs: 60_000 });
      await t.kiln.createTasks({ sessionId: "busy", inputs: [enc(pingInput(1_500))] });
      for await (const task of t.frontend.watchTask({ sessionId: "busy", taskId: "1" }, { timeoutMs: 60_000 }))
        if (task.status?.state === flame.TaskState.Running) break;
      await t.frontend.closeSession({ sessionId: "busy" });
      const closed = await t.frontend.getSession({ sessionId: "busy" });
      assert.equal(closed.status?.state, flame.SessionState.Closed);
      assert.equal(closed.status?.running, 1, "kept while its task runs");
      let lastSucceed = -1;
      for await (const change of changes) {
        for (const s of change.sessions) lastSucceed = s.status?.succeed ?? lastSucceed;
        if (change.deletedSessionIds.includes("busy")) break;
      }
      assert.equal(lastSucceed, 1, "the running task was let finish before the deletion");
      assert.equal(await isGone(t, "busy"), true);
    } finally {
      watch.abort();
      await agent.close();
      await t.close();
    }
  });

  it("converts a store made without auto_vacuum once, at open, keeping what it holds", async () => {
    const dataDir = tempDir("retention-old");
    const old = new Database(path.join(dataDir, "kiln.db"));
    old.pragma("journal_mode = WAL");
    for (const [v, sql] of MIGRATIONS.entries()) {
      old.exec(sql);
      old.pragma(`user_version = ${v + 1}`);
    }
    old
      .prepare("INSERT INTO applications (name, spec, state, creation_time) VALUES (?, ?, ?, ?)")
      .run("kept", Buffer.alloc(0), 0, 1);
    assert.equal(old.pragma("auto_vacuum", { simple: true }), 0);
    old.close();
    const t = await startTestControlPlane({ dataDir });
    try {
      const app = await t.frontend.getApplication({ name: "kept" });
      assert.equal(app.metadata?.name, "kept");
    } finally {
      await t.close();
    }
    const after = new Database(path.join(dataDir, "kiln.db"), { readonly: true });
    try {
      assert.equal(after.pragma("auto_vacuum", { simple: true }), 2, "INCREMENTAL");
    } finally {
      after.close();
    }
  });

  it("refuses a retention that is not a whole number of ms, naming --retention", () => {
    for (const retentionMs of [-1, 1.5, Number.NaN])
      assert.throws(
        () => resolveConfig({ dataDir: "/nonexistent", retentionMs }),
        (err: Error) => /^retentionMs: .*\(--retention\) must be a whole number of at least 0/.test(err.message),
      );
  });
});
