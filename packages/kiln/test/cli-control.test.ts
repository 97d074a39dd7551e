import { KilnClient, type TaskUpdate } from "@kiln/sdk";
import { withTimeout } from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli, startCli, type CliProcess } from "./cli-helpers.js";

/** Long enough that a task still running at the end of a test was never stopped. */
const HOUR_MS = 3_600_000;
const sleepInput = (durationMs: number) => JSON.stringify({ durationMs });

/** Resolves once the session's tasks (from a snapshot on) include `count` in `state`. */
async function tasksReach(
  client: KilnClient,
  sessionId: string,
  state: flame.TaskState,
  count = 1,
): Promise<Map<string, TaskUpdate>> {
  const stop = new AbortController();
  const latest = new Map<string, TaskUpdate>();
  const reached = (async () => {
    for await (const updates of client.session(sessionId).watch({ snapshot: true, signal: stop.signal })) {
      for (const u of updates) latest.set(u.taskId, u);
      if ([...latest.values()].filter((u) => u.state === state).length >= count) return latest;
    }
    throw new Error(`the watch of ${sessionId} ended before ${count} tasks were ${flame.TaskState[state]}`);
  })();
  try {
    return await withTimeout(reached, 60_000, `${count} ${flame.TaskState[state]} tasks in ${sessionId}`);
  } finally {
    stop.abort();
  }
}

/** The JSON lines a `-w -o json` process has printed so far (complete lines only). */
function jsonLines<T>(p: CliProcess): T[] {
  const lines = p.output().split("\n").slice(0, -1);
  return lines.filter((line) => line.startsWith("{")).map((line) => JSON.parse(line) as T);
}

/** Resolves with the index of the first JSON line, from line `from` on, that passes `test`. */
function jsonLineWhere<T>(p: CliProcess, from: number, test: (value: T) => boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      const index = jsonLines<T>(p).findIndex((value, i) => i >= from && test(value));
      if (index < 0) return;
      finish();
      resolve(index);
    };
    const timer = setTimeout(() => fail("no such line within 30 s"), 30_000);
    const onExit = (): void => fail("the process exited first");
    const fail = (why: string): void => {
      finish();
      reject(new Error(`${why}; output:\n${p.output()}`));
    };
    const finish = (): void => {
      clearTimeout(timer);
      p.child.stdout!.off("data", check);
      p.child.off("exit", onExit);
    };
    // Registered after the CliProcess's own listener, so output() already holds each chunk.
    p.child.stdout!.on("data", check);
    p.child.once("exit", onExit);
    check();
  });
}

type SessionListJson = { sessions?: { metadata: { id: string } }[] };
type TaskListJson = { tasks: { session: string; task: string; state: string; message?: string }[] };
const sessionIds = (list: SessionListJson): string[] => (list.sessions ?? []).map((s) => s.metadata.id);

describe("everyday control from the CLI", () => {
  let dir: string;
  let up: CliProcess | undefined;
  let endpoint: string;
  let client: KilnClient;
  const kiln = (...args: string[]) => runCli([...args, "--endpoint", endpoint], 60_000);
  const start = (...args: string[]) => startCli([...args, "--endpoint", endpoint]);

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "kiln-cli-control-"));
    up = startCli(["up", "--data-dir", path.join(dir, "data"), "--port", "0", "--executors", "2"]);
    endpoint = (await up.waitFor(/Kiln is up at (http:\/\/\S+)/, 40_000))[1]!;
    client = new KilnClient({ endpoint });
    // kiln-ping, one task at a time per executor: a cancelled task that kept sleeping would hold its executor.
    const ping = await client.getApplication("kiln-ping");
    await client.registerApplication("one-at-a-time", { ...ping.spec!, labels: ["kiln.concurrency=1"] });
  });

  after(async () => {
    client?.close();
    try {
      if (up) assert.equal(await up.stop(), 0, up.output());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("kiln cancel stops a running task in its service, counts only unfinished tasks, and names what it cannot find", async () => {
    const session = await client.createSession({ application: "one-at-a-time", id: "cancel-1", maxInstances: 1 });
    await session.run(sleepInput(0));
    const [long] = await session.createTasks([sleepInput(HOUR_MS)]);
    await tasksReach(client, session.id, flame.TaskState.Running);

    const unknownTask = await kiln("cancel", "-s", session.id, "-t", long!, "99");
    assert.equal(unknownTask.code, 1, unknownTask.stderr);
    assert.match(unknownTask.stderr, /^error: task "cancel-1\/99" not found \(NOT_FOUND\)\n$/);
    assert.equal((await session.getTask(long!)).status?.state, flame.TaskState.Running, "nothing was cancelled");

    const cancelled = await kiln("cancel", "-s", session.id);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    assert.equal(cancelled.stdout, "Cancelled 1 task in session cancel-1.\n", "the finished task is not counted");
    assert.equal((await session.getTask(long!)).status?.state, flame.TaskState.Cancelled);

    // The one executor runs one task at a time: this one runs only if the service stopped the cancelled one.
    const next = await withTimeout(session.run(sleepInput(0)), 60_000, "a task on the executor the cancelled one held");
    assert.match(new TextDecoder().decode(next), /"elapsedMs"/);

    const again = await kiln("cancel", "-s", session.id, "-o", "json");
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(JSON.parse(again.stdout), { session: "cancel-1", cancelled: 0 });

    const unknownSession = await kiln("cancel", "-s", "no-such-session");
    assert.equal(unknownSession.code, 1);
    assert.match(unknownSession.stderr, /^error: session "no-such-session" not found \(NOT_FOUND\)\n$/);
    await session.close();
  });

  it("Ctrl-C of kiln ping cancels its running tasks, counts them as cancelled and exits 130", async () => {
    const ping = start("ping", "-p", "-t", "6", "-d", String(HOUR_MS));
    try {
      const sessionId = (await ping.waitFor(/^Session (\S+) was created/m))[1]!;
      await tasksReach(client, sessionId, flame.TaskState.Running);
      ping.child.kill("SIGINT");
      assert.equal(await ping.exited(), 130, ping.output());
      assert.match(ping.output(), /^Succeeded:\s+0\/6$/m);
      assert.match(ping.output(), /^Failed:\s+0$/m);
      assert.match(ping.output(), /^Cancelled:\s+6$/m);
      assert.match(ping.output(), /^interrupted: session \S+ was closed; 6 unfinished tasks were cancelled$/m);
      const tasks = await kiln("list", "-t", "-s", sessionId, "-o", "json");
      const states = (JSON.parse(tasks.stdout) as TaskListJson).tasks.map((t) => t.state);
      assert.deepEqual(states, Array(6).fill("Cancelled"), "running tasks too, not only pending ones");
      assert.match((await kiln("view", "-s", sessionId)).stdout, /^State:\s+Closed$/m);
    } finally {
      await ping.stop();
    }
  });

  it("kiln list -s -w prints each new state of the sessions it shows; Ctrl-C ends it with exit 0", async () => {
    const json = start("list", "-s", "-w", "--app", "kiln-ping", "--state", "open", "-o", "json");
    const table = start("list", "-s", "-w");
    try {
      await jsonLineWhere<SessionListJson>(json, 0, () => true);
      await table.waitFor(/^ID\s+State\s+App\s.*\sCancelled\s+Created$/m);
      assert.equal((await kiln("create", "-a", "kiln-ping", "--id", "watched-1")).code, 0);
      const shown = await jsonLineWhere<SessionListJson>(json, 0, (v) => sessionIds(v).includes("watched-1"));
      await table.waitFor(/^watched-1\s+Open\s+kiln-ping\s/m);
      assert.equal((await kiln("close", "-s", "watched-1")).code, 0);
      // --state open: once closed it leaves the JSON list; the plain list shows it Closed.
      await jsonLineWhere<SessionListJson>(json, shown + 1, (v) => !sessionIds(v).includes("watched-1"));
      await table.waitFor(/^watched-1\s+Closed\s+kiln-ping\s/m);
      for (const watch of [json, table]) {
        watch.child.kill("SIGINT");
        assert.equal(await watch.exited(), 0, watch.output());
      }
    } finally {
      await json.stop();
      await table.stop();
    }
  });

  it("kiln view -s ID -w follows one session and ends once it is closed with nothing running", async () => {
    const session = await client.createSession({ application: "kiln-ping", id: "viewed-1" });
    const view = start("view", "-s", session.id, "-w");
    try {
      await view.waitFor(/^Tasks: 0 pending, 0 running, 0 succeed, 0 failed$/m);
      await session.run(sleepInput(0));
      await view.waitFor(/^Tasks: 0 pending, 0 running, 1 succeed, 0 failed$/m);
      await session.close();
      assert.equal(await view.exited(), 0, view.output());
      assert.match(view.output(), /^State:\s+Closed$/m);
    } finally {
      await view.stop();
    }
  });

  it("kiln list -t lists tasks with --state, --app and --limit; -s counts add up; -t -s ID -w follows them", async () => {
    const session = await client.createSession({ application: "kiln-ping", id: "tasks-1" });
    await Promise.all([session.run(sleepInput(0)), session.run(sleepInput(0))]);
    const [toCancel, toRun] = await session.createTasks([sleepInput(HOUR_MS), sleepInput(HOUR_MS)]);
    await tasksReach(client, session.id, flame.TaskState.Running, 2);
    assert.equal(await session.cancel([toCancel!]), 1);

    const all = await kiln("list", "-t", "-s", session.id);
    assert.equal(all.code, 0, all.stderr);
    assert.match(all.stdout, /^Task\s+State\s+Updated\s+Message$/m);
    const rows = all.stdout.trimEnd().split("\n").slice(1);
    assert.deepEqual(
      rows.map((r) => r.split(/\s+/).slice(0, 2).join(" ")),
      ["1 Succeed", "2 Succeed", `${toCancel} Cancelled`, `${toRun} Running`],
    );
    assert.match(
      all.stdout,
      new RegExp(`^${toCancel}\\s+Cancelled\\s+\\d\\d:\\d\\d:\\d\\d\\s+cancelled by request$`, "m"),
    );

    const some = await kiln(
      "list",
      "-t",
      "-s",
      session.id,
      "--state",
      "running,cancelled",
      "--limit",
      "1",
      "-o",
      "json",
    );
    assert.deepEqual(
      (JSON.parse(some.stdout) as TaskListJson).tasks.map((t) => [t.task, t.state, t.message]),
      [[toCancel, "Cancelled", "cancelled by request"]],
    );

    const running = await kiln("list", "-t", "--app", "kiln-ping", "--state", "running");
    assert.match(running.stdout, /^Session\s+Task\s+State\s+Updated\s+Message$/m);
    assert.match(running.stdout, new RegExp(`^tasks-1\\s+${toRun}\\s+Running\\s`, "m"));

    const sessions = await kiln("list", "-s", "--app", "kiln-ping", "--state", "open");
    const row = sessions.stdout.split("\n").find((l) => l.startsWith("tasks-1 "))!;
    const [pending, runningCount, succeed, failed, cancelled] = row.split(/\s+/).slice(5, 10).map(Number);
    assert.deepEqual([pending, runningCount, succeed, failed, cancelled], [0, 1, 2, 0, 1]);
    assert.equal(pending! + runningCount! + succeed! + failed! + cancelled!, 4, "every task is in one column");

    const watch = start("list", "-t", "-s", session.id, "-w");
    try {
      await watch.waitFor(new RegExp(`^${toRun}\\s+Running\\s`, "m"));
      await session.close();
      await session.cancel();
      assert.equal(await watch.exited(), 0, "the watch ends once the session is closed and its tasks are done");
      assert.match(watch.output(), new RegExp(`^${toRun}\\s+Cancelled\\s`, "m"));
    } finally {
      await watch.stop();
    }
    const finished = await kiln("list", "-t", "-s", session.id, "-w");
    assert.equal(finished.code, 0, "a watch of a finished session shows it once and ends, on an idle cluster too");
    assert.equal(finished.stdout.trimEnd().split("\n").length, 5, finished.stdout);
  });

  it("-r gpu=1 keeps the default cpu and memory, and kiln ping says at once that no node can run it", async () => {
    const created = await kiln("create", "-a", "kiln-ping", "-r", "gpu=1", "--id", "gpu-one");
    assert.equal(created.code, 0, created.stderr);
    assert.match((await kiln("view", "-s", "gpu-one")).stdout, /^Resources:\s+cpu=1,mem=1Gi,gpu=1$/m);
    assert.equal((await kiln("close", "-s", "gpu-one")).code, 0);

    // A stall timeout of an hour: only the event can end this ping within the test's time.
    const ping = await kiln("ping", "-r", "gpu=1", "-t", "2", "--stall-timeout", "3600");
    assert.equal(ping.code, 1, ping.stderr);
    assert.match(
      ping.stderr,
      /^error: no node can run this session: it asks for gpu=1, but the most any node has is gpu=0 \(node \S+\).*; kiln ping closed the session\n$/,
    );
    const sessionId = ping.stdout.match(/^Session (\S+) was created/m)![1]!;
    const viewed = await kiln("view", "-s", sessionId);
    assert.match(
      viewed.stdout,
      /^  \d\d:\d\d:\d\d\.\d{3}: no node can run this session: it asks for gpu=1, .*\(1030\)$/m,
    );
    assert.match(viewed.stdout, /^State:\s+Closed$/m);
  });

  it("a session no node fits starts running when a node that fits joins", async () => {
    const session = await client.createSession({ application: "kiln-ping", id: "needs-big-node", resreq: "cpu=1000" });
    const view = start("view", "-s", session.id, "-w");
    let agent: CliProcess | undefined;
    try {
      const output = session.run(sleepInput(0));
      await view.waitFor(
        /: no node can run this session: it asks for cpu=1000, but the most any node has is cpu=\d+ .*\(1030\)$/m,
      );
      agent = startCli([
        "agent",
        "--endpoint",
        endpoint,
        "--name",
        "big-node",
        "--cpus",
        "1000",
        "--executors",
        "1",
        "--work-dir",
        path.join(dir, "big-node"),
      ]);
      await agent.waitFor(/Kiln agent big-node joined/);
      const result = JSON.parse(new TextDecoder().decode(await withTimeout(output, 60_000, "the task"))) as {
        host: string;
      };
      assert.ok(result.host);
      await view.waitFor(/: a node that fits this session has joined \(1031\)$/m);
      await session.close();
      assert.equal(await view.exited(), 0, view.output());
    } finally {
      await view.stop();
      await agent?.stop();
    }
  });
});
