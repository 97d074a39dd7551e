/**
 * What every store backend must do (store.ts): one list of cases, run against SQLite and PostgreSQL.
 */
import { ErrorCode, FailedPreconditionError, type KilnError } from "@kiln/protocol";
import Database from "better-sqlite3";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { GroupCommit } from "../src/control/store/group-commit.js";
import { openStore } from "../src/control/store/open-store.js";
import { POSTGRES_MIGRATIONS } from "../src/control/store/postgres-migrations.js";
import { MIGRATIONS } from "../src/control/store/sqlite-migrations.js";
import type { Store, StoredTask } from "../src/control/store/store.js";
import { within } from "../../../test/support/within.js";
import { storeBackends, stopStoreBackends, type StoreBackend } from "./support/store-backends.js";

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures/store-commit-child.ts");

/** A store of one backend, opened and reopened on the same file or database. */
interface Subject {
  open(): Promise<Store>;
  /** The schema version recorded in the (closed) store. */
  version(): Promise<number>;
  /** Records `v` as the (closed) store's schema version, as a newer Kiln would have. */
  setVersion(v: number): Promise<void>;
  latest: number;
  /** argv for the crash child: the --store value ("-" for SQLite) and the data dir. */
  childArgs: string[];
}

async function subject(backend: StoreBackend): Promise<Subject> {
  const { store, dataDir } = await backend.fresh();
  const open = () => openStore(store, dataDir, "normal");
  if (store === undefined) {
    const file = path.join(dataDir, "kiln.db");
    const withDb = <T>(fn: (db: Database.Database) => T): Promise<T> => {
      const db = new Database(file);
      try {
        return Promise.resolve(fn(db));
      } finally {
        db.close();
      }
    };
    return {
      open,
      version: () => withDb((db) => db.pragma("user_version", { simple: true }) as number),
      setVersion: (v) => withDb((db) => void db.pragma(`user_version = ${v}`)),
      latest: MIGRATIONS.length,
      childArgs: ["-", dataDir],
    };
  }
  const withDb = async <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const c = new pg.Client({ connectionString: store });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };
  return {
    open,
    version: () =>
      withDb(async (c) => (await c.query<{ version: number }>("SELECT version FROM kiln_schema")).rows[0]!.version),
    setVersion: (v) => withDb(async (c) => void (await c.query("UPDATE kiln_schema SET version = $1", [v]))),
    latest: POSTGRES_MIGRATIONS.length,
    childArgs: [store, dataDir],
  };
}

const bytes = (...b: number[]) => new Uint8Array(b);

function task(id: number, init: Partial<StoredTask> = {}): StoredTask {
  return {
    sessionId: "s1",
    id,
    state: 0,
    input: bytes(id % 256, 7),
    attempt: 0,
    retries: 0,
    creationTime: 1_700_000_000_000 + id,
    seq: id,
    events: [],
    ...init,
  };
}

const session = (id = "s1", state = 0) => ({
  id,
  application: "app",
  spec: bytes(1, 2, 3),
  state,
  creationTime: 1_700_000_000_000,
});

/** A GroupCommit whose failures are kept for the test to look at, instead of thrown. */
function groupCommit(store: Store): { commit: GroupCommit; failures: KilnError[] } {
  const failures: KilnError[] = [];
  return { commit: new GroupCommit(store, (refusal) => failures.push(refusal)), failures };
}

/** Runs `fn` on a freshly opened store of a new subject, closing the store afterwards. */
async function withStore<T>(s: Subject, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await s.open();
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const ids = (tasks: StoredTask[]) => tasks.map((t) => t.id);

for (const backend of storeBackends()) {
  describe(`store conformance: ${backend.name}`, { skip: backend.skip }, () => {
    after(() => stopStoreBackends());

    it("a fresh store is migrated to the current version, and a reopened one keeps its data", async () => {
      const s = await subject(backend);
      await withStore(s, async (store) => {
        await store.commit((w) => {
          w.putApplication({ name: "app", spec: bytes(9), state: 0, creationTime: 5 });
          w.putSession(session());
          w.upsertTask(task(1));
        });
      });
      assert.equal(await s.version(), s.latest);
      await withStore(s, async (store) => {
        const ws = await store.loadWorkingSet(1000);
        assert.deepEqual(
          ws.applications.map((a) => [a.name, [...a.spec], a.creationTime]),
          [["app", [9], 5]],
        );
        assert.deepEqual(
          ws.sessions.map((x) => x.session.id),
          ["s1"],
        );
        assert.deepEqual(ids(ws.tasks), [1]);
        assert.deepEqual([...ws.tasks[0]!.input!], [1, 7]);
      });
      assert.equal(await s.version(), s.latest);
    });

    it("a store whose schema is newer than this Kiln knows is refused, and left as it was", async () => {
      const s = await subject(backend);
      await withStore(s, (store) => Promise.resolve(store.commit((w) => w.putSession(session()))));
      await s.setVersion(s.latest + 1);
      await assert.rejects(
        s.open(),
        (err: unknown) =>
          err instanceof FailedPreconditionError &&
          err.message.includes(
            `the store's schema is version ${s.latest + 1}, newer than this Kiln knows (${s.latest})`,
          ),
      );
      assert.equal(await s.version(), s.latest + 1);
      await s.setVersion(s.latest);
      await withStore(s, async (store) =>
        assert.deepEqual(
          (await store.loadWorkingSet(1000)).sessions.map((x) => x.session.id),
          ["s1"],
        ),
      );
    });

    it("listTasks pages in id order after a cursor, with a limit, and only changes after a sequence number", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putSession(session());
          // Written out of order: pages still come in id order.
          for (const id of [5, 3, 1, 4, 2, 7, 6]) w.upsertTask(task(id, { seq: id * 10 }));
          w.putSession(session("other"));
          w.upsertTask(task(1, { sessionId: "other" }));
        });
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 0, limit: 100 })), [1, 2, 3, 4, 5, 6, 7]);
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 0, limit: 3 })), [1, 2, 3]);
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 3, limit: 3 })), [4, 5, 6]);
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 6, limit: 3 })), [7]);
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 7, limit: 3 })), []);
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 0, limit: 100, changedAfter: 40 })), [5, 6, 7]);
        assert.deepEqual(ids(await store.listTasks("s1", { afterId: 5, limit: 1, changedAfter: 40 })), [6]);
        assert.deepEqual(ids(await store.listTasks("other", { afterId: 0, limit: 100 })), [1]);
        assert.equal(await store.getTask("s1", 99), undefined);
      });
    });

    it("loadWorkingSet reads only unfinished tasks, with each session's progress counters and events", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putSession(session());
          w.upsertTask(task(1, { state: 0 }));
          w.upsertTask(task(2, { state: 1 }));
          w.upsertTask(task(3, { state: 2, output: bytes(1), completionTime: 9 }));
          w.upsertTask(task(4, { state: 3, message: "boom", completionTime: 9 }));
          w.upsertTask(task(5, { state: 4, completionTime: 9 }));
          w.putSessionProgress("s1", { taskCount: 5, succeed: 1, failed: 1, cancelled: 1, lastSeq: 12 });
          w.addSessionEvent("s1", 1, { code: 0, time: 100 });
          w.addSessionEvent("s1", 2, { code: 1, message: "closed", time: 200 });
        });
        const ws = await store.loadWorkingSet(1000);
        assert.deepEqual(ids(ws.tasks), [1, 2]);
        assert.deepEqual(ws.sessions[0]!.progress, { taskCount: 5, succeed: 1, failed: 1, cancelled: 1, lastSeq: 12 });
        assert.deepEqual(ws.sessions[0]!.events, [
          { code: 0, time: 100 },
          { code: 1, message: "closed", time: 200 },
        ]);
        // Finished tasks are read on demand, whole.
        const failed = await store.getTask("s1", 4);
        assert.equal(failed?.message, "boom");
        assert.equal(failed?.completionTime, 9);
      });
    });

    it("loadWorkingSet gives each session's first unfinished tasks whole and the rest as id spans", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putSession(session("s1"));
          w.putSession(session("s2"));
          for (let id = 1; id <= 10; id++) w.upsertTask(task(id, { state: id === 6 ? 2 : 0 }));
          w.upsertTask(task(1, { sessionId: "s2" }));
        });
        const ws = await store.loadWorkingSet(3);
        assert.deepEqual(
          ws.tasks.map((t) => `${t.sessionId}/${t.id}`),
          ["s1/1", "s1/2", "s1/3", "s2/1"],
        );
        assert.deepEqual(ws.backlog, [
          { sessionId: "s1", from: 4, to: 5 },
          { sessionId: "s1", from: 7, to: 10 },
        ]);
        const unfinished = await store.listTasks("s1", { afterId: 3, throughId: 8, limit: 10, unfinishedOnly: true });
        assert.deepEqual(ids(unfinished), [4, 5, 7, 8]);
      });
    });

    it("endUnfinishedTasks ends a span's unfinished tasks in place, numbering them and appending the event", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putSession(session());
          for (let id = 1; id <= 6; id++)
            w.upsertTask(task(id, { state: id === 3 ? 2 : 0, events: [{ code: 0, message: "created", time: 1 }] }));
        });
        await store.commit((w) =>
          w.endUnfinishedTasks("s1", 2, 5, { state: 4, message: "session closed", time: 50 }, 100),
        );
        const all = await store.listTasks("s1", { afterId: 0, limit: 10 });
        assert.deepEqual(
          all.map((t) => [t.id, t.state, t.seq]),
          [
            [1, 0, 1],
            [2, 4, 100],
            [3, 2, 3],
            [4, 4, 102],
            [5, 4, 103],
            [6, 0, 6],
          ],
          "only unfinished tasks in the span change; each takes firstSeq + id - from",
        );
        const fourth = all[3]!;
        assert.equal(fourth.message, "session closed");
        assert.equal(fourth.completionTime, 50);
        assert.deepEqual(fourth.events, [
          { code: 0, message: "created", time: 1 },
          { code: 4, message: "session closed", time: 50 },
        ]);
        assert.deepEqual([...fourth.input!], [4, 7], "the input stays");
      });
    });

    it("an upsert updates a task's mutable columns and keeps the input and output key it was written with", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putSession(session());
          w.upsertTask(task(1, { input: bytes(1, 2, 3), outputTo: "watcher-a" }));
        });
        await store.commit((w) => {
          const events = [{ code: 2, message: "done", time: 50 }];
          w.upsertTask(task(1, { input: bytes(9), state: 2, output: bytes(4), attempt: 2, seq: 8, events }));
        });
        // Twice in one commit: the first carries the input, the second does not.
        await store.commit((w) => {
          w.upsertTask(task(2, { input: bytes(5, 5) }));
          w.upsertTask({ ...task(2, { state: 2, output: bytes(6), seq: 9 }), input: undefined });
        });
        const one = await store.getTask("s1", 1);
        assert.deepEqual([...one!.input!], [1, 2, 3]);
        assert.deepEqual([...one!.output!], [4]);
        assert.equal(one!.state, 2);
        assert.equal(one!.attempt, 2);
        assert.equal(one!.seq, 8);
        assert.deepEqual(one!.events, [{ code: 2, message: "done", time: 50 }]);
        assert.equal(one!.outputTo, "watcher-a");
        const two = await store.getTask("s1", 2);
        assert.deepEqual([...two!.input!], [5, 5]);
        assert.deepEqual([...two!.output!], [6]);
      });
    });

    it("deleteSession removes the session with its tasks, events and submission keys, and nothing else", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          for (const id of ["s1", "s2"]) {
            w.putSession(session(id));
            w.upsertTask(task(1, { sessionId: id }));
            w.addSessionEvent(id, 1, { code: 0, time: 1 });
            w.putSubmission({ sessionId: id, key: "k", firstTaskId: 1, count: 1, time: 10 });
          }
        });
        await store.commit((w) => w.deleteSession("s1"));
        const ws = await store.loadWorkingSet(1000);
        assert.deepEqual(
          ws.sessions.map((x) => x.session.id),
          ["s2"],
        );
        assert.deepEqual(
          ws.tasks.map((t) => t.sessionId),
          ["s2"],
        );
        assert.deepEqual(
          ws.submissions.map((x) => x.sessionId),
          ["s2"],
        );
        assert.equal(await store.getTask("s1", 1), undefined);
        // Deleted and created again in one commit: the order of the writes is kept.
        await store.commit((w) => {
          w.deleteSession("s2");
          w.putSession(session("s2", 1));
          w.addSessionEvent("s2", 1, { code: 5, time: 2 });
        });
        const again = (await store.loadWorkingSet(1000)).sessions;
        assert.deepEqual(
          again.map((x) => [x.session.id, x.session.state, x.events.map((e) => e.code)]),
          [["s2", 1, [5]]],
        );
      });
    });

    it("deleteSubmissionsBefore forgets keys first used before the time; putSubmission replaces a key", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putSession(session());
          w.putSubmission({ sessionId: "s1", key: "old", firstTaskId: 1, count: 2, time: 100 });
          w.putSubmission({ sessionId: "s1", key: "new", firstTaskId: 3, count: 1, time: 300 });
          w.putSubmission({ sessionId: "s1", key: "new", firstTaskId: 4, count: 5, time: 200 });
        });
        await store.commit((w) => w.deleteSubmissionsBefore(200));
        assert.deepEqual((await store.loadWorkingSet(1000)).submissions, [
          { sessionId: "s1", key: "new", firstTaskId: 4, count: 5, time: 200 },
        ]);
      });
    });

    it("nodes are put once and deleted", async () => {
      await withStore(await subject(backend), async (store) => {
        await store.commit((w) => {
          w.putNode("n1");
          w.putNode("n2");
          w.putNode("n1");
        });
        await store.commit((w) => w.deleteNode("n2"));
        assert.deepEqual((await store.loadWorkingSet(1000)).nodes, ["n1"]);
      });
    });

    it("a group commit of many writes is one transaction: one failing write stores none of them", async () => {
      await withStore(await subject(backend), async (store) => {
        const { commit, failures } = groupCommit(store);
        commit.write((w) => {
          w.putSession(session());
          w.addSessionEvent("s1", 1, { code: 0, time: 1 });
        });
        await commit.flushed();
        for (let id = 1; id <= 500; id++) commit.write((w) => w.upsertTask(task(id)));
        // The same event number again: the key refuses it, and with it the whole turn.
        commit.write((w) => w.addSessionEvent("s1", 1, { code: 1, time: 2 }));
        await assert.rejects(commit.flushed(), (err: KilnError) => err.code === ErrorCode.Internal);
        assert.equal(failures.length, 1, "the failure is told once");
        assert.match(failures[0]!.message, /could not write its store .*nothing of this request was stored/);
        assert.deepEqual(await store.listTasks("s1", { afterId: 0, limit: 1000 }), []);
        // The commit failed for good: later writes are refused too.
        commit.write((w) => w.putNode("n"));
        await assert.rejects(commit.flushed());
        assert.deepEqual((await store.loadWorkingSet(1000)).nodes, []);
      });
    });

    it("commits land in the order they were written, each turn's after the one before", async () => {
      await withStore(await subject(backend), async (store) => {
        const { commit, failures } = groupCommit(store);
        commit.write((w) => w.putSession(session()));
        const landed: number[] = [];
        const turns = 40;
        for (let turn = 1; turn <= turns; turn++) {
          commit.write((w) => {
            w.upsertTask(task(1, { state: turn < turns ? 0 : 2, seq: turn }));
            w.putSessionProgress("s1", { taskCount: 1, succeed: 0, failed: 0, cancelled: 0, lastSeq: turn });
            return () => landed.push(turn);
          });
          // The next write comes in a later turn of the event loop, while this one may still be in flight.
          await new Promise((resolve) => setImmediate(resolve));
        }
        await commit.flushed();
        assert.deepEqual(failures, []);
        assert.deepEqual(
          landed,
          Array.from({ length: turns }, (_, i) => i + 1),
        );
        assert.equal((await store.getTask("s1", 1))!.seq, turns);
        assert.equal((await store.loadWorkingSet(1000)).sessions[0]!.progress.lastSeq, turns);
      });
    });

    it("a second open of a store in use is refused; once the first closes, it opens", async () => {
      const s = await subject(backend);
      const first = await s.open();
      try {
        await assert.rejects(
          s.open(),
          (err: unknown) =>
            err instanceof FailedPreconditionError && /is in use by another control plane/.test(err.message),
        );
      } finally {
        await first.close();
      }
      await withStore(s, (store) => store.loadWorkingSet(1000));
    });

    it("what was acknowledged is there after the process that wrote it is killed -9", async () => {
      const s = await subject(backend);
      const n = 2_000;
      const child = spawn(process.execPath, ["--import", "tsx", CHILD, ...s.childArgs, String(n)], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      const exited = new Promise((resolve) => child.once("exit", resolve));
      try {
        await within(
          new Promise<void>((resolve, reject) => {
            child.stdout.on("data", (d: Buffer) => d.toString().includes("committed") && resolve());
            child.once("exit", (code) => reject(new Error(`the child exited (${code}) before committing`)));
          }),
          60_000,
          "the child to commit",
        );
      } finally {
        child.kill("SIGKILL");
        await exited;
      }
      // The lock went with the process: the store opens at once, with all of it.
      await withStore(s, async (store) => {
        const tasks = await store.listTasks("crash", { afterId: 0, limit: n + 1 });
        assert.equal(tasks.length, n);
        assert.deepEqual([...tasks[n - 1]!.input!], [n % 256]);
      });
    });
  });
}
