import { create } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { Executor, type ExecutorSetting } from "../src/agent/executor.js";
import { expandVars } from "../src/agent/expand-vars.js";
import { describeNode, visibleGpuCount } from "../src/agent/node-description.js";
import { untilChanged, untilDirChanges } from "../../../test/support/until.js";
import { alive, bindMessage, enc, fixtureApp, pingApp, task, text } from "./support/agent-helpers.js";

const { ExecutorEvent, BindFailure } = kiln;

/** Executors under test, with everything they report; waits end on the report they wait for. */
class Harness {
  readonly completions: kiln.Completion[] = [];
  readonly reports: kiln.ExecutorReport[] = [];
  readonly logs: string[] = [];
  readonly executors: Executor[] = [];
  readonly setting: ExecutorSetting;
  /** Emits "change" on every completion and report. */
  private readonly changes = new EventEmitter();

  constructor(
    readonly workDir: string,
    socketTimeoutMs = 30_000,
  ) {
    for (const d of ["sockets", "executors", "logs"]) fs.mkdirSync(path.join(workDir, d), { recursive: true });
    this.setting = {
      controlPlaneEndpoint: "http://127.0.0.1:1",
      socketDir: path.join(workDir, "sockets"),
      executorsDir: path.join(workDir, "executors"),
      logDir: path.join(workDir, "logs"),
      socketTimeoutMs,
      log: (line) => this.logs.push(line),
      completion: (c) => {
        this.completions.push(c);
        this.changes.emit("change");
      },
      report: (r) => {
        this.reports.push(r);
        this.changes.emit("change");
      },
      finished: () => {},
    };
  }

  start(bind: kiln.Bind, setting: Partial<ExecutorSetting> = {}): Executor {
    const e = new Executor(bind, { ...this.setting, ...setting });
    this.executors.push(e);
    e.bind();
    return e;
  }

  reportsOf(id: string): kiln.ExecutorReport[] {
    return this.reports.filter((r) => r.executorId === id);
  }

  /** Resolves with `check`'s first value, checked again at each completion or report. */
  until<T>(check: () => T | undefined | false, ms: number, what: string | (() => string)): Promise<T> {
    return untilChanged(this.changes, check, ms, what);
  }

  /** The n-th (1-based) report of `event` for executor `id`. */
  waitForReport(id: string, event: kiln.ExecutorEvent, ms = 20_000, n = 1): Promise<kiln.ExecutorReport> {
    return this.until(
      () => this.reportsOf(id).filter((r) => r.event === event)[n - 1],
      ms,
      () =>
        `report ${ExecutorEvent[event]} #${n} of ${id} (got ${JSON.stringify(this.reportsOf(id).map((r) => [ExecutorEvent[r.event], r.message]))})`,
    );
  }

  waitForCompletion(id: string, taskId: string, ms = 20_000): Promise<kiln.Completion> {
    return this.until(
      () => this.completions.find((c) => c.executorId === id && c.taskId === taskId),
      ms,
      `completion of task ${taskId} on ${id}`,
    );
  }

  async close(): Promise<void> {
    await Promise.all(this.executors.map((e) => e.unbind()));
    fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}

function newHarness(socketTimeoutMs?: number): Harness {
  return new Harness(fs.mkdtempSync(path.join(os.tmpdir(), "kiln-agent-")), socketTimeoutMs);
}

describe("agent helpers", () => {
  test("expandVars expands ${VAR} and $VAR, unset names to empty", () => {
    const env = { HOME: "/h", A_1: "x" };
    assert.equal(expandVars("${HOME}/bin:$A_1:$MISSING:${MISSING}:$1:cost $", env), "/h/bin:x:::$1:cost $");
  });

  test("GPUs come from CUDA_VISIBLE_DEVICES", () => {
    assert.equal(visibleGpuCount({}), 0);
    assert.equal(visibleGpuCount({ CUDA_VISIBLE_DEVICES: "" }), 0);
    assert.equal(visibleGpuCount({ CUDA_VISIBLE_DEVICES: "-1" }), 0);
    assert.equal(visibleGpuCount({ CUDA_VISIBLE_DEVICES: "0,1,3" }), 3);
  });

  test("describeNode reports the machine, with overrides, and rejects bad numbers", () => {
    const d = describeNode({ name: "n1", executors: 3, cpus: 2, memoryBytes: 1024, gpus: 1 });
    assert.equal(d.name, "n1");
    assert.equal(d.hostname, os.hostname());
    assert.equal(d.maxExecutors, 3);
    assert.deepEqual([d.capacity?.cpu, d.capacity?.memory, d.capacity?.gpu], [2n, 1024n, 1]);
    assert.equal(d.arch, os.arch());
    assert.equal(d.os, os.platform());
    assert.equal(describeNode().capacity?.memory, BigInt(os.totalmem()));
    assert.throws(() => describeNode({ executors: 0 }), /executors: must be a whole number/);
    assert.throws(() => describeNode({ name: "a/b" }), /name/);
  });
});

describe("executor with the kiln-ping service", () => {
  let h: Harness;
  before(() => (h = newHarness()));
  after(() => h.close());

  test("binds, runs 500 tasks over the batched stream, unbinds and cleans up", async () => {
    const e = h.start(bindMessage("e-ping", pingApp(), { concurrency: 64 }));
    await h.waitForReport("e-ping", ExecutorEvent.BOUND);
    for (let i = 1; i <= 500; i++) e.enqueue(task("e-ping", i, i % 2 ? "" : JSON.stringify({ durationMs: 1 })));
    await h.until(
      () => h.completions.length >= 500,
      30_000,
      () => `500 completions (have ${h.completions.length})`,
    );
    assert.equal(h.completions.length, 500);
    const pids = new Set<number>();
    for (const c of h.completions) {
      assert.equal(c.returnCode, 0, c.message);
      const out = JSON.parse(text(c.output)) as { host: string; pid: number; elapsedMs: number; memoryBytes: number };
      assert.equal(out.host, os.hostname());
      pids.add(out.pid);
    }
    assert.equal(pids.size, 1, "one service process ran them all");
    assert.ok(!h.logs.some((l) => l.includes("one call per task")), `used the batched stream: ${h.logs.join("\n")}`);

    const [pid] = [...pids];
    const sockets = fs.readdirSync(h.setting.socketDir);
    assert.equal(sockets.length, 1);
    assert.ok(fs.existsSync(path.join(h.setting.executorsDir, "e-ping")));
    await e.unbind();
    assert.deepEqual(
      h.reportsOf("e-ping").map((r) => r.event),
      [ExecutorEvent.BOUND, ExecutorEvent.UNBOUND],
    );
    assert.ok(!alive(pid!), "the service process is gone after unbind");
    assert.deepEqual(fs.readdirSync(h.setting.socketDir), [], "socket removed");
    assert.ok(!fs.existsSync(path.join(h.setting.executorsDir, "e-ping")), "temp dir removed");
    assert.ok(fs.existsSync(path.join(h.setting.logDir, "e-ping.stderr.log")), "logs kept");
  });

  test("a bad task input fails that task with a clear message", async () => {
    const e = h.start(bindMessage("e-ping-bad", pingApp()));
    await h.waitForReport("e-ping-bad", ExecutorEvent.BOUND);
    e.enqueue(task("e-ping-bad", 1, "{not json"));
    e.enqueue(task("e-ping-bad", 2, JSON.stringify({ durationMs: -1 })));
    e.enqueue(task("e-ping-bad", 3, JSON.stringify({ memoryBytes: 4096 })));
    const [bad, negative, ok] = await Promise.all(["1", "2", "3"].map((id) => h.waitForCompletion("e-ping-bad", id)));
    assert.equal(bad!.returnCode, -1);
    assert.match(bad!.message ?? "", /kiln-ping input: not valid JSON/);
    assert.match(negative!.message ?? "", /durationMs must be a number from 0/);
    assert.equal(ok!.returnCode, 0);
    assert.equal((JSON.parse(text(ok!.output)) as { memoryBytes: number }).memoryBytes, 4096);
    await e.unbind();
  });
});

describe("executor with test services", () => {
  let h: Harness;
  before(() => (h = newHarness()));
  after(() => h.close());

  test("the service gets the documented environment, arguments and working directory", async () => {
    const workingDirectory = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-wd-"));
    try {
      const app = fixtureApp("agent-test-service.ts", {
        arguments: ["--session=${KILN_SESSION_ID}", "$KILN_EXECUTOR_ID"],
        environments: [create(flame.EnvironmentSchema, { name: "GREETING", value: "hello-${KILN_SESSION_ID}" })],
      });
      const e = h.start(bindMessage("e-env", app, { commonData: enc("shared") }));
      await h.waitForReport("e-env", ExecutorEvent.BOUND);
      const inputs = [
        "argv",
        "env:GREETING",
        "env:KILN_EXECUTOR_ID",
        "env:TMPDIR",
        "env:KILN_ENDPOINT",
        "env:FLAME_INSTANCE_ENDPOINT",
        "cwd",
        "common",
      ];
      inputs.forEach((input, i) => e.enqueue(task("e-env", i + 1, input)));
      const out = await Promise.all(inputs.map((_, i) => h.waitForCompletion("e-env", String(i + 1))));
      const [argv, greeting, executorId, tmpdir, endpoint, socket, cwd, common] = out.map((c) => text(c.output));
      assert.deepEqual(JSON.parse(argv!), ["--session=s-1", "e-env"]);
      assert.equal(greeting, "hello-s-1");
      assert.equal(executorId, "e-env");
      assert.equal(tmpdir, path.join(h.setting.executorsDir, "e-env"));
      assert.equal(cwd, tmpdir, "the per-executor temp dir is the default working directory");
      assert.equal(endpoint, "http://127.0.0.1:1");
      assert.ok(socket!.startsWith(h.setting.socketDir) && socket!.length < 100, socket);
      assert.equal(common, "shared");
      await e.unbind();

      const e2 = h.start(bindMessage("e-wd", fixtureApp("agent-test-service.ts", { workingDirectory })));
      await h.waitForReport("e-wd", ExecutorEvent.BOUND);
      e2.enqueue(task("e-wd", 1, "cwd"));
      assert.equal(text((await h.waitForCompletion("e-wd", "1")).output), fs.realpathSync(workingDirectory));
      await e2.unbind();
    } finally {
      fs.rmSync(workingDirectory, { recursive: true, force: true });
    }
  });

  test("the service never gets the agent's tokens: its KILN_TOKEN is the task credential of its Bind", async () => {
    const saved = { KILN_TOKEN: process.env.KILN_TOKEN, KILN_NODE_TOKEN: process.env.KILN_NODE_TOKEN };
    // As an agent started with its tokens in its environment would have them.
    Object.assign(process.env, { KILN_TOKEN: "agent-cluster-token", KILN_NODE_TOKEN: "agent-node-token" });
    try {
      const app = fixtureApp("agent-test-service.ts", {
        environments: [create(flame.EnvironmentSchema, { name: "STOLEN", value: "${KILN_NODE_TOKEN}${KILN_TOKEN}" })],
      });
      const bound = (id: string, taskCredential: string) => {
        const e = h.start(bindMessage(id, app, { taskCredential }));
        return h.waitForReport(id, ExecutorEvent.BOUND).then(() => e);
      };
      const ask = async (e: Executor, id: string, inputs: string[]) => {
        inputs.forEach((input, i) => e.enqueue(task(id, i + 1, input)));
        return (await Promise.all(inputs.map((_, i) => h.waitForCompletion(id, String(i + 1))))).map((c) =>
          text(c.output),
        );
      };
      const scoped = await bound("e-cred", "kiln-task.v1.minted-for-s-1");
      assert.deepEqual(await ask(scoped, "e-cred", ["env:KILN_TOKEN", "env:KILN_NODE_TOKEN", "env:STOLEN"]), [
        "kiln-task.v1.minted-for-s-1",
        "(unset)",
        "",
      ]);
      await scoped.unbind();
      // A cluster without tokens mints none: the service gets no KILN_TOKEN at all.
      const open = await bound("e-open", "");
      assert.deepEqual(await ask(open, "e-open", ["env:KILN_TOKEN", "env:KILN_NODE_TOKEN"]), ["(unset)", "(unset)"]);
      await open.unbind();
    } finally {
      for (const [name, value] of Object.entries(saved))
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
    }
  });

  test("a Flame-style service (no Invoke stream) runs through unary calls", async () => {
    const e = h.start(
      bindMessage("e-flame", fixtureApp("agent-flame-service.ts"), { concurrency: 4, commonData: enc("cd") }),
    );
    await h.waitForReport("e-flame", ExecutorEvent.BOUND);
    for (let i = 1; i <= 20; i++) e.enqueue(task("e-flame", i, `in${i}`));
    await h.until(
      () => h.completions.filter((c) => c.executorId === "e-flame").length === 20,
      15_000,
      "20 completions",
    );
    for (let i = 1; i <= 20; i++) {
      const c = h.completions.find((x) => x.executorId === "e-flame" && x.taskId === String(i))!;
      assert.equal(c.returnCode, 0);
      assert.equal(text(c.output), `flame:${i}:in${i}:cd`);
    }
    assert.ok(
      h.logs.some((l) => l.includes("e-flame: one call per task")),
      h.logs.join("\n"),
    );
    await e.unbind();
    assert.equal(h.reportsOf("e-flame").at(-1)?.event, ExecutorEvent.UNBOUND);
  });

  test("a task error is a return code with the message; cancelled tasks report nothing", async () => {
    const e = h.start(bindMessage("e-err", fixtureApp("agent-test-service.ts")));
    await h.waitForReport("e-err", ExecutorEvent.BOUND);
    e.enqueue(task("e-err", 1, "fail:bad input"));
    e.enqueue(task("e-err", 2, "sleep:300"));
    e.enqueue(task("e-err", 3, "queued"));
    e.enqueue(task("e-err", 4, "after"));
    const failed = await h.waitForCompletion("e-err", "1");
    assert.equal(failed.returnCode, -1);
    assert.equal(failed.message, "failed: bad input");
    const ref = (id: string) => create(kiln.TaskRefSchema, { sessionId: "s-1", taskId: id, attempt: 1 });
    assert.deepEqual(
      e.heldTasks().map((r) => r.taskId),
      ["2", "3", "4"],
    );
    e.cancel([ref("2"), ref("3")]);
    assert.deepEqual(
      e.heldTasks().map((r) => r.taskId),
      ["4"],
    );
    await h.waitForCompletion("e-err", "4");
    assert.deepEqual(
      h.completions.filter((c) => c.executorId === "e-err").map((c) => c.taskId),
      ["1", "4"],
      "the running task's result and the queued task were dropped",
    );
    await e.unbind();
  });

  test("a crash mid-task fails the tasks in flight with the exit code and stderr, then restarts", async () => {
    const e = h.start(bindMessage("e-crash", fixtureApp("agent-test-service.ts"), { concurrency: 2 }));
    await h.waitForReport("e-crash", ExecutorEvent.BOUND);
    e.enqueue(task("e-crash", 1, "pid"));
    const firstPid = Number(text((await h.waitForCompletion("e-crash", "1")).output));
    e.enqueue(task("e-crash", 2, "sleep:10000"));
    e.enqueue(task("e-crash", 3, "crash"));
    e.enqueue(task("e-crash", 4, "pid"));
    for (const id of ["2", "3"]) {
      const c = await h.waitForCompletion("e-crash", id, 5_000);
      assert.equal(c.returnCode, -1);
      assert.match(
        c.message ?? "",
        /service process exited with code 3 \(signal none\); stderr tail: .*crashing on purpose/s,
      );
    }
    const exited = await h.waitForReport("e-crash", ExecutorEvent.PROCESS_EXITED);
    assert.equal(exited.code, 3);
    await h.waitForReport("e-crash", ExecutorEvent.BOUND, 20_000, 2);
    const c4 = await h.waitForCompletion("e-crash", "4");
    assert.equal(c4.returnCode, 0, "the queued task survived the restart");
    assert.notEqual(Number(text(c4.output)), firstPid, "it ran in a new process");
    assert.ok(!alive(firstPid));
    await e.unbind();
  });

  test("a task sent to a process that was killed but not yet reaped runs on the restarted process", async () => {
    const e = h.start(bindMessage("e-killed", fixtureApp("agent-test-service.ts"), { concurrency: 2 }));
    await h.waitForReport("e-killed", ExecutorEvent.BOUND);
    e.enqueue(task("e-killed", 1, "pid"));
    const firstPid = Number(text((await h.waitForCompletion("e-killed", "1")).output));
    // Task 2 reaches the service and is running when it dies: it fails.
    e.enqueue(task("e-killed", 2, "hang"));
    const stderrLog = path.join(h.setting.logDir, "e-killed.stderr.log");
    await untilDirChanges(
      h.setting.logDir,
      () => fs.existsSync(stderrLog) && fs.readFileSync(stderrLog, "utf8").includes("hanging"),
      5_000,
      "task 2 to start",
    );
    // Task 3 is sent to a process that can no longer read it (stopped, then killed), as when a
    // client kills the process between two calls: it never started, so it must not fail.
    process.kill(firstPid, "SIGSTOP");
    e.enqueue(task("e-killed", 3, "pid"));
    await new Promise((resolve) => setImmediate(resolve));
    process.kill(firstPid, "SIGKILL");
    const c2 = await h.waitForCompletion("e-killed", "2", 5_000);
    assert.equal(c2.returnCode, -1);
    assert.match(c2.message ?? "", /service process exited with code none \(signal SIGKILL\)/);
    const c3 = await h.waitForCompletion("e-killed", "3", 20_000);
    assert.equal(c3.returnCode, 0, `task 3 ran: ${c3.message ?? ""}`);
    assert.notEqual(Number(text(c3.output)), firstPid, "on the restarted process");
    assert.equal(h.completions.filter((c) => c.executorId === "e-killed" && c.taskId === "3").length, 1);
    await e.unbind();
  });

  test("a process that keeps exiting is restarted 3 times, then the executor unbinds", async () => {
    const app = fixtureApp("agent-test-service.ts", {
      environments: [create(flame.EnvironmentSchema, { name: "TEST_SERVICE_MODE", value: "exit-after-enter" })],
    });
    h.start(bindMessage("e-flap", app));
    const unbound = await h.waitForReport("e-flap", ExecutorEvent.UNBOUND, 40_000);
    assert.match(unbound.message, /not restarting the service process again: it was restarted 3 times within 60 s/);
    const events = h.reportsOf("e-flap").map((r) => ExecutorEvent[r.event]);
    assert.deepEqual(events, [
      ...["BOUND", "PROCESS_EXITED", "BOUND", "PROCESS_EXITED", "BOUND", "PROCESS_EXITED", "BOUND", "PROCESS_EXITED"],
      "UNBOUND",
    ]);
    assert.ok(!fs.existsSync(path.join(h.setting.executorsDir, "e-flap")));
  });

  test("OnSessionEnter failing is BIND_FAILED code 12 with the service's message", async () => {
    const app = fixtureApp("agent-test-service.ts", {
      environments: [create(flame.EnvironmentSchema, { name: "TEST_SERVICE_MODE", value: "enter-fails" })],
    });
    h.start(bindMessage("e-enter", app));
    const r = await h.waitForReport("e-enter", ExecutorEvent.BIND_FAILED);
    assert.equal(r.code, BindFailure.SESSION_ENTER);
    assert.match(r.message, /enter refused by the test service/);
    assert.equal(h.reportsOf("e-enter").length, 1);
    assert.ok(!fs.existsSync(path.join(h.setting.executorsDir, "e-enter")));
  });
});

describe("executor bind failures", () => {
  let h: Harness;
  before(() => (h = newHarness(800)));
  after(() => h.close());
  afterEach(() => assert.deepEqual(fs.readdirSync(h.setting.socketDir), [], "no socket left behind"));

  const node = (script: string) =>
    create(flame.ApplicationSpecSchema, { command: process.execPath, arguments: ["-e", script] });

  test("a command that does not exist: code 11", async () => {
    h.start(bindMessage("e-nocmd", create(flame.ApplicationSpecSchema, { command: "/nonexistent/kiln-service" })));
    const r = await h.waitForReport("e-nocmd", ExecutorEvent.BIND_FAILED);
    assert.equal(r.code, BindFailure.PROCESS_START);
    assert.match(r.message, /cannot start "\/nonexistent\/kiln-service".*ENOENT/);
  });

  test("a process that exits before opening its socket: code 11 with exit code and stderr", async () => {
    h.start(bindMessage("e-exit", node("console.error('bad config file'); process.exit(2)")));
    const r = await h.waitForReport("e-exit", ExecutorEvent.BIND_FAILED);
    assert.equal(r.code, BindFailure.PROCESS_START);
    assert.match(r.message, /exited with code 2 \(signal none\); stderr tail: bad config file/);
  });

  test("a process that never opens its socket: code 11 after the socket timeout, process killed", async () => {
    h.start(bindMessage("e-nosock", node("console.log(process.pid); setInterval(() => {}, 1000)")));
    const r = await h.waitForReport("e-nosock", ExecutorEvent.BIND_FAILED);
    assert.equal(r.code, BindFailure.PROCESS_START);
    assert.match(r.message, /did not open its socket .* within 800 ms/);
    const pid = Number(fs.readFileSync(path.join(h.setting.logDir, "e-nosock.stdout.log"), "utf8").trim());
    assert.ok(pid > 0 && !alive(pid), "the process was killed");
  });

  test("a package URL on an executor without package settings: code 10, saying so", async () => {
    h.start(bindMessage("e-url", pingApp({ url: "https://example.com/app.tar.gz" })));
    const r = await h.waitForReport("e-url", ExecutorEvent.BIND_FAILED);
    assert.equal(r.code, BindFailure.INSTALL);
    assert.match(r.message, /no package delivery set up \(url: https:\/\/example\.com\/app\.tar\.gz\)/);
  });

  test("unbind while binding reports UNBOUND only and kills the process", async () => {
    const e = h.start(bindMessage("e-early", node("console.log(process.pid); setInterval(() => {}, 1000)")), {
      socketTimeoutMs: 30_000,
    });
    const logFile = path.join(h.setting.logDir, "e-early.stdout.log");
    const pid = await untilDirChanges(
      h.setting.logDir,
      () => {
        // The whole line: a read between two writes must not take half a pid.
        const line = fs.existsSync(logFile) ? fs.readFileSync(logFile, "utf8") : "";
        return line.endsWith("\n") ? Number(line) : undefined;
      },
      10_000,
      "the process to start",
    );
    await e.unbind("test");
    assert.deepEqual(
      h.reportsOf("e-early").map((r) => [r.event, r.message]),
      [[ExecutorEvent.UNBOUND, "test"]],
    );
    assert.ok(!alive(pid));
  });
});
