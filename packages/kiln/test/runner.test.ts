import { connect, ObjectCache, Runner, type KilnClient, type ObjectFuture, type RunnerOptions } from "@kiln/sdk";
import { isNotFound, isObjectRef, ObjectRef, TaskFailedError } from "@kiln/protocol";
import {
  decodeCall,
  encodeCall,
  encodeServiceSpec,
  OUTPUT_CAPTURE_LIMIT,
  RUNNER_FORMAT,
  runnerKeys,
} from "@kiln/protocol/runner";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { untilDirChanges } from "../../../test/support/until.js";
import { closedPort, runCli, startCli, type CliProcess } from "./cli-helpers.js";
import { waitFor } from "./support/processes.js";
import type * as chattyModule from "./fixtures/runner-project/src/chatty.js";
import type * as counterModule from "./fixtures/runner-project/src/counter.js";
import type * as errorsModule from "./fixtures/runner-project/src/errors.js";
import type * as mathModule from "./fixtures/runner-project/src/math.js";
import type * as nestedModule from "./fixtures/runner-project/src/nested.js";
import type * as depsModule from "./fixtures/runner-project/src/uses-deps.js";
import type * as legacyModule from "./fixtures/runner-project/src/legacy.cjs";
import type * as valuesModule from "./fixtures/runner-project/src/values.js";

const FIXTURE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "fixtures/runner-project");
const MiB = 1024 * 1024;
// Five bind attempts with back-off (0.5 + 1 + 2 + 4 s) before the control plane fails the pending tasks.
const BIND_FAILURE_MS = 40_000;

describe("Runner against kiln up", () => {
  let dir: string;
  let project: string;
  let up: CliProcess | undefined;
  let options: RunnerOptions;
  let client: KilnClient;
  let cache: ObjectCache;
  let runner: Runner;
  let shoutDir: string;

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "kiln-runner-"));
    project = path.join(dir, "project");
    await fs.cp(FIXTURE, project, { recursive: true });
    shoutDir = path.join(dir, "shout");
    await fs.mkdir(shoutDir);
    await fs.writeFile(
      path.join(shoutDir, "package.json"),
      JSON.stringify({ name: "kiln-fixture-shout", version: "1.0.0", type: "module", main: "index.js" }),
    );
    await fs.writeFile(path.join(shoutDir, "index.js"), "export const shout = (s) => `${s.toUpperCase()}!`;\n");
    up = startCli(["up", "--data-dir", path.join(dir, "data"), "--port", "0", "--executors", "6"]);
    const m = await up.waitFor(/Kiln is up at (http:\/\/\S+)\n\s+object cache: (http:\/\/\S+)/, 40_000);
    // An empty config file: the user's own ~/.kiln/config.yaml stays out of the test.
    const configPath = path.join(dir, "empty-config.yaml");
    await fs.writeFile(configPath, "");
    options = { project, endpoint: m[1]!, cacheEndpoint: m[2]!, configPath };
    client = await connect({ endpoint: m[1]!, configPath: options.configPath! });
    cache = new ObjectCache({ endpoint: m[2]! });
    runner = await Runner.open("rt", options);
  });

  after(async () => {
    try {
      await runner?.close();
    } finally {
      client?.close();
      cache?.close();
      try {
        if (up) assert.equal(await up.stop(), 0, up.output());
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
    }
  });

  it("registers the application from the kiln-run template with the project's package", async () => {
    assert.equal(runner.registered, true);
    const app = await client.getApplication("rt");
    const template = await client.getApplication("kiln-run");
    assert.deepEqual(app.spec!.arguments, template.spec!.arguments);
    assert.ok(app.spec!.labels.includes("kiln.runner"));
    const url = app.spec!.url!;
    const m = /^cache:\/\/(rt\/pkg\/rt-[0-9a-f]{16}\.tar\.gz)#sha256=([0-9a-f]{64})$/.exec(url);
    assert.ok(m, url);
    assert.equal((await cache.statObject(m[1]!)).sha256, m[2]);
  });

  it("calls exported functions with typed results, futures passed as arguments", async () => {
    const math = runner.module<typeof mathModule>("src/math.ts");
    const add = await runner.service(math, "add");
    const sum: number = await add(2, 3);
    assert.equal(sum, 5);
    const chained = add(add(1, 2), add(3, 4));
    assert.equal(await chained, 10);
    assert.match(chained.taskId ?? "", /^\d+$/);
    assert.match(chained.sessionId, /^rt-/);
    const slowSquare = await runner.service(runner.module<typeof mathModule>("src/math.js"), "slowSquare");
    assert.deepEqual(await runner.get([slowSquare(3, 30), slowSquare(4, 1)] as const), [9, 16]);

    const order: number[] = [];
    for await (const done of runner.select([slowSquare(5, 400), slowSquare(6, 1)])) order.push(await done);
    assert.deepEqual(order, [36, 25], "select yields in completion order");
    await assert.rejects(runner.wait([slowSquare(7, 5_000)], { timeoutMs: 200 }), { code: "DEADLINE_EXCEEDED" });

    // The SDK's own values, imported by package name in the project, work on the executor.
    const describeRefs = await runner.service(math, "describeRefs");
    const shared = await runner.putObject({ table: [1, 2, 3] });
    assert.deepEqual(await describeRefs({ shared, n: 1 }), [`shared: ref ${shared.key}`, "n: number"]);

    const typeChecks = () => {
      // @ts-expect-error a string where the function takes a number
      void add("2", 3);
      // @ts-expect-error a future of a string where the function takes a number
      void add(describeRefs({}), 3);
      // @ts-expect-error not an export of the module
      void runner.service(math, "subtract");
    };
    void typeChecks;
  });

  it("passes a future's large result by reference: the client never downloads it", async () => {
    const math = runner.module<typeof mathModule>("src/math.ts");
    const makeBlob = await runner.service(math, "makeBlob");
    const measure = await runner.service(math, "measure");
    const blob = makeBlob(3 * MiB, 2);
    const measured = measure(blob);
    assert.deepEqual(await measured, { size: 3 * MiB, sum: 6 * MiB });
    const blobRef = await blob.ref();
    assert.equal(blobRef.key, runnerKeys.result("rt", blob.sessionId, blob.taskId!));
    const input = (await client.session(measured.sessionId).getTask(measured.taskId!)).spec!.input!;
    assert.ok(input.byteLength < 1024, `the task input is ${input.byteLength} bytes`);
    const [arg] = decodeCall(input).args;
    assert.ok(isObjectRef(arg));
    assert.equal(arg.key, blobRef.key);
  });

  it("sends and returns values over 1 MiB through the cache", async () => {
    const math = runner.module<typeof mathModule>("src/math.ts");
    const measure = await runner.service(math, "measure");
    const echo = await runner.service(math, "echo");
    const big = new Uint8Array(1.5 * MiB).fill(3);
    const measured = measure(big);
    assert.deepEqual(await measured, { size: 1.5 * MiB, sum: 4.5 * MiB });
    const input = (await client.session(measured.sessionId).getTask(measured.taskId!)).spec!.input!;
    assert.ok(input.byteLength < 1024, "the argument travelled through the cache");
    const echoed = echo(big);
    assert.deepEqual(await echoed, big);
    assert.equal((await echoed.ref()).size > MiB, true);
  });

  it("runs a class with constructor arguments, one instance per executor", async () => {
    const mod = runner.module<typeof counterModule>("src/counter.ts");
    const counter = await runner.service(mod, "Counter", { args: [10, "apples"], autoscale: false });
    assert.deepEqual((({ pid: _pid, ...rest }) => rest)(await counter.add(5)), { value: 15, label: "apples" });
    assert.equal((await counter.add(1)).value, 16, "the same instance served both calls");
    assert.equal(await counter.current(), 16);
    const typeChecks = async () => {
      // @ts-expect-error the constructor needs a number first
      await runner.service(mod, "Counter", { args: ["ten"] });
      // @ts-expect-error a class whose constructor needs arguments needs options.args
      await runner.service(mod, "Counter");
    };
    void typeChecks;
  });

  it("keeps a stateful instance's state when it moves to a new process", async () => {
    const counter = await runner.service(runner.module<typeof counterModule>("src/counter.ts"), "Counter", {
      args: [100],
      stateful: true,
    });
    const first = await counter.add(1);
    assert.equal((await counter.add(1)).value, 102);
    const second = counter.add(0);
    const sessionId = second.sessionId;
    await second;
    process.kill(first.pid, "SIGKILL");
    // Wait until the executor has noticed and started a new process for the session.
    await waitFor(
      "the process exit to be recorded",
      async () => (await client.getSession(sessionId)).status!.events.some((e) => e.code === 1020),
      15_000,
    );
    await waitFor(
      "the executor to be bound again",
      async () =>
        (await client.listExecutors()).some(
          (e) => e.status?.sessionId === sessionId && e.status.state === flame.ExecutorState.ExecutorBound,
        ),
      15_000,
    );
    const moved = await counter.add(1);
    assert.notEqual(moved.pid, first.pid);
    assert.equal(moved.value, 103, "the new instance started from the saved state, not from 100");
    const saved = await cache.getObject<{ value: number }>(runnerKeys.state("rt", sessionId));
    assert.equal(saved.value, 103);
  });

  it("captures the output of concurrent calls separately", async () => {
    const chatty = await runner.service(runner.module<typeof chattyModule>("src/chatty.ts"), "chatty");
    const calls = Array.from({ length: 8 }, (_, id) => chatty(id, 5));
    assert.deepEqual(await runner.get(calls), [0, 1, 2, 3, 4, 5, 6, 7]);
    for (const [id, call] of calls.entries()) {
      const out = await call.output();
      const lines = (n: number, what: string) => Array.from({ length: n }, (_, i) => `call ${id} ${what} ${i}\n`);
      assert.equal(out.stdout, lines(5, "line").join(""));
      assert.equal(out.stderr, lines(5, "err").join(""));
      assert.deepEqual([out.stdoutTruncated, out.stderrTruncated], [0, 0]);
    }
  });

  it("bounds a call's output, and writes after the call ends reach the executor's own log", async () => {
    const mod = runner.module<typeof chattyModule>("src/chatty.ts");
    const flood = await runner.service(mod, "flood");
    const flooded = flood(100_000);
    const out = await flooded.output();
    assert.equal(out.stdout, "x".repeat(OUTPUT_CAPTURE_LIMIT));
    assert.equal(out.stdoutTruncated, 100_000 - OUTPUT_CAPTURE_LIMIT);

    const writeLater = await runner.service(mod, "writeLater");
    const marker = `late write ${process.pid}`;
    const call = writeLater(marker, 100);
    assert.equal(await call, "returned");
    assert.equal((await call.output()).stdout, "");
    const logs = path.join(dir, "data", "agent", "logs");
    await untilDirChanges(
      logs,
      () => readdirSync(logs).some((name) => readFileSync(path.join(logs, name), "utf8").includes(marker)),
      10_000,
      "the late write in an executor's stdout log",
    );
  });

  it("rejects with the remote error: same name and message, remote stack, task id, output", async () => {
    const mod = runner.module<typeof errorsModule>("src/errors.ts");
    const fail = await runner.service(mod, "fail");
    const call = fail("boom");
    const err = await call.then(
      () => assert.fail("the call should reject"),
      (e: unknown) => e as Error & { taskId?: string; sessionId?: string; code?: number },
    );
    assert.equal(err.name, "DemoError");
    assert.equal(err.message, "boom");
    assert.equal(err.code, 42);
    assert.match(
      err.stack ?? "",
      // The remote frame, in the installed release, with the TypeScript source's line (11: `throw new DemoError`).
      /^DemoError: boom\n\s+at fail \(.*\/releases\/[0-9a-f]{64}\/src\/errors\.ts:11:\d+\)/,
    );
    assert.equal(err.taskId, call.taskId);
    assert.equal(err.sessionId, call.sessionId);
    assert.equal((await call.output()).stdout, "about to fail with boom\n");
    // An SDK error class thrown by the project keeps its name and fields too.
    const checkPositive = await runner.service(runner.module<typeof mathModule>("src/math.ts"), "checkPositive");
    await assert.rejects(checkPositive(-1).get(), {
      name: "InvalidArgumentError",
      field: "x",
      code: "INVALID_ARGUMENT",
    });
  });

  it("installs the project's and the service's dependencies once per set per node", async () => {
    const mod = runner.module<typeof depsModule>("src/uses-deps.ts");
    const dependencies = [`kiln-fixture-shout@file:${shoutDir}`];
    const greet = await runner.service(mod, "greet", { dependencies });
    const again = await runner.service(mod, "greet", { dependencies });
    assert.deepEqual(await runner.get([greet("ada"), again("bob")]), ["HELLO ADA!", "HELLO BOB!"]);
    const packages = path.join(dir, "data", "agent", "packages");
    const installs = (await fs.readdir(path.join(packages, "deps"))).filter((d) => d.startsWith("runner-"));
    assert.equal(installs.length, 2, `one install for the project's own set, one with shout: ${installs.join(", ")}`);
    for (const key of installs) {
      const log = await fs.readFile(path.join(packages, "logs", `${key}.log`), "utf8");
      assert.equal(log.match(/^# .* install /gm)?.length, 1, `npm ran once for ${key}:\n${log}`);
    }
  });

  it("a CommonJS module's require() finds @kiln/sdk and the project's dependencies", async () => {
    const greet = await runner.service(runner.module<typeof legacyModule>("src/legacy.cts"), "greetFromCjs");
    assert.equal(await greet("ada", 42), "hello ada, please: number");
  });

  it("a Runner opened inside a call reuses the application and leaves it in place", async () => {
    const before = (await client.getApplication("rt")).spec!.url;
    const addInside = await runner.service(runner.module<typeof nestedModule>("src/nested.ts"), "addInside");
    assert.deepEqual(await addInside("rt", 20, 22), { sum: 42, registered: false });
    assert.equal((await client.getApplication("rt")).spec!.url, before, "the application is unchanged");
  });

  it("a Runner opened inside a call under a new name runs the same package, then removes only its own", async () => {
    const outer = (await client.getApplication("rt")).spec?.url ?? assert.fail("rt has no package url");
    const addInside = await runner.service(runner.module<typeof nestedModule>("src/nested.ts"), "addInside");
    // Registered from the package the executor runs (nothing packed or uploaded inside the call), closed after.
    assert.deepEqual(await addInside("rt-inner", 1, 2), { sum: 3, registered: true });
    await assert.rejects(client.getApplication("rt-inner"), isNotFound);
    assert.deepEqual(await cache.listObjects("rt-inner"), []);
    // The outer application and the package both point at are untouched.
    assert.equal((await client.getApplication("rt")).spec!.url, outer);
    const packageKey = outer.slice("cache://".length, outer.indexOf("#"));
    assert.ok((await cache.statObject(packageKey)).size > 0);
  });

  it("reuses an existing application, and on close deletes only its own objects", async () => {
    const second = await Runner.open("rt", options);
    let sessionId: string;
    try {
      assert.equal(second.registered, false);
      const measure = await second.service(second.module<typeof mathModule>("src/math.ts"), "measure");
      const call = measure(new Uint8Array(2 * MiB));
      assert.equal((await call).size, 2 * MiB);
      sessionId = call.sessionId;
      assert.ok((await cache.listObjects(`rt/${sessionId}`)).length > 0, "the large argument is in the cache");
    } finally {
      await second.close();
    }
    await second.close(); // idempotent
    assert.equal((await client.getApplication("rt")).metadata?.name, "rt", "the application is still there");
    assert.deepEqual(await cache.listObjects(`rt/${sessionId}`), []);
    assert.ok(
      (await cache.listObjects("rt")).some((o) => o.key.startsWith("rt/pkg/")),
      "the package is kept",
    );
    const add = await runner.service(runner.module<typeof mathModule>("src/math.ts"), "add");
    assert.equal(await add(1, 1), 2, "the first Runner still works");
  });

  it("close unregisters the application it registered and deletes everything under its name", async () => {
    let closed: Runner;
    {
      await using own = await Runner.open("rt-close", options);
      closed = own;
      const makeBlob = await own.service(own.module<typeof mathModule>("src/math.ts"), "makeBlob");
      await makeBlob(2 * MiB, 1).ref();
      await own.putObject({ shared: true });
      assert.ok((await cache.listObjects("rt-close")).length >= 3, "package, result and shared object");
    }
    const own = closed;
    await assert.rejects(client.getApplication("rt-close"), { code: "NOT_FOUND" });
    assert.deepEqual(await cache.listObjects("rt-close"), []);
    await assert.rejects(own.service(own.module<typeof mathModule>("src/math.ts"), "add"), {
      code: "FAILED_PRECONDITION",
    });
  });

  it("kiln data shows a Runner task's call, result and captured output", async () => {
    const chatty = await runner.service(runner.module<typeof chattyModule>("src/chatty.ts"), "chatty");
    const call = chatty(7, 2);
    assert.equal(await call, 7);
    const endpoints = ["--endpoint", options.endpoint!, "--cache-endpoint", options.cacheEndpoint!];
    const one = await runCli(["data", call.sessionId, call.taskId!, ...endpoints]);
    assert.equal(one.code, 0, one.stderr);
    assert.match(one.stdout, /Service +src\/chatty\.ts#chatty/);
    assert.match(one.stdout, /args\[0\] =\n +7\n +args\[1\] =\n +2/);
    assert.match(one.stdout, /result =\n +7/);
    assert.match(one.stdout, /stdout:\n +call 7 line 0\n +call 7 line 1/);
    assert.match(one.stdout, /stderr:\n +call 7 err 0/);
    const list = await runCli(["data", call.sessionId, ...endpoints]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /Service src\/chatty\.ts#chatty/);
    assert.match(list.stdout, new RegExp(`${call.taskId} +Succeed +chatty\\(7, 2\\) → 7`));
  });

  it("kiln runner-check passes on the cluster and reports every step as JSON", async () => {
    const check = await runCli(
      ["runner-check", "--json", "--endpoint", options.endpoint!, "--cache-endpoint", options.cacheEndpoint!],
      120_000,
    );
    assert.equal(check.code, 0, check.stdout + check.stderr);
    const report = JSON.parse(check.stdout) as { ok: boolean; steps: { step: string; ok: boolean }[] };
    assert.equal(report.ok, true);
    assert.deepEqual(
      report.steps.map((s) => s.step),
      [
        "package and register",
        "install and first call",
        "many calls",
        "future chaining",
        "stateful instance",
        "remote error",
        "output capture",
        "getData",
        "clean up",
      ],
    );
    const apps = await client.listApplications();
    assert.ok(!apps.some((a) => a.metadata?.name.startsWith("kiln-runner-check-")), "the check cleaned up");
  });

  it("kiln runner-check on a cluster it cannot reach exits 3 and says so, in text as in JSON", async () => {
    const nowhere = `http://127.0.0.1:${await closedPort()}`;
    for (const json of [[], ["--json"]]) {
      const check = await runCli(["runner-check", ...json, "--endpoint", nowhere, "--cache-endpoint", nowhere]);
      assert.equal(check.code, 3, check.stdout + check.stderr);
      assert.match(check.stderr, /cannot reach the Kiln cluster/);
    }
  });

  describe("bad input", { concurrency: true }, () => {
    it("a module path outside the project, or missing", () => {
      assert.throws(() => runner.module("../outside.ts"), { name: "InvalidArgumentError", field: "module" });
      assert.throws(() => runner.module("/etc/hostname"), { field: "module", message: /outside the project/ });
      assert.throws(() => runner.module("src/nope.ts"), { field: "module", message: /does not exist/ });
    });

    it("a non-serializable argument throws before anything is sent", async () => {
      const echo = await runner.service(runner.module<typeof mathModule>("src/math.ts"), "echo");
      const first = echo(1);
      await first;
      assert.throws(() => echo({ handler: () => 1 }), {
        name: "CodecError",
        message: /args\[0\]\.handler: functions cannot be encoded/,
      });
      assert.throws(() => echo(new (class Point {})()), { message: /instances of Point cannot be encoded/ });
      const status = (await client.getSession(first.sessionId)).status!;
      assert.equal(status.succeed + status.pending + status.running + status.failed, 1, "no task was created");
    });

    it("an ObjectRef naming a foreign endpoint is refused by the executor", async () => {
      const echo = await runner.service(runner.module<typeof mathModule>("src/math.ts"), "echo");
      const foreign = ObjectRef.from({
        endpoint: "http://192.0.2.1:7422",
        key: "rt/elsewhere/secret",
        version: 1,
        size: 3,
        sha256: "0".repeat(64),
      });
      await assert.rejects(echo(foreign).get(), (e: Error) => {
        assert.equal(e.name, "InvalidArgumentError");
        assert.match(e.message, /"http:\/\/192\.0\.2\.1:7422" is not the configured object cache .*refusing to follow/);
        return true;
      });
    });

    it("an export that is neither a function nor a class fails the bind, as a session event", async () => {
      const values = runner.module<typeof valuesModule>("src/values.ts");
      // @ts-expect-error a number is not a service
      const notAFunction = (await runner.service(values, "notAFunction")) as unknown as () => ObjectFuture<unknown>;
      const call = notAFunction();
      await assert.rejects(call.get(), (e: unknown) => {
        assert.ok(e instanceof TaskFailedError);
        assert.match(e.message, /src\/values\.ts#notAFunction is a number, not a function or class/);
        return true;
      });
      const events = (await client.getSession(call.sessionId)).status!.events;
      assert.ok(events.some((e) => e.code === 1012 && /not a function or class/.test(e.message ?? "")));
    });

    it("a module that fails to load fails the bind with its error; the call rejects, no hang", async () => {
      const broken = await runner.service(runner.module<{ neverReached(): void }>("src/broken.ts"), "neverReached");
      const call = broken();
      const started = Date.now();
      await assert.rejects(call.get(), (e: unknown) => {
        assert.ok(e instanceof TaskFailedError);
        assert.match(
          e.message,
          /could not be bound .*cannot load src\/broken\.ts: boom at load: broken\.ts refuses to start/,
        );
        return true;
      });
      assert.ok(Date.now() - started < BIND_FAILURE_MS);
      const events = (await client.getSession(call.sessionId)).status!.events;
      assert.ok(events.some((e) => e.code === 1012 && /boom at load/.test(e.message ?? "")));
    });

    it("a spec that says class for a function export fails the bind, naming both", async () => {
      // The Runner sends kind "auto"; another client may insist on one, and the executor holds it to that.
      const session = await client.createSession({
        application: "rt",
        commonData: encodeServiceSpec({
          format: RUNNER_FORMAT,
          module: "src/math.ts",
          export: "add",
          kind: "class",
          args: [],
          stateful: false,
          dependencies: [],
        }),
      });
      try {
        const input = encodeCall({
          format: RUNNER_FORMAT,
          type: "input",
          service: "src/math.ts#add",
          method: null,
          args: [1, 2],
        });
        await assert.rejects(session.run(input), (e: unknown) => {
          assert.ok(e instanceof TaskFailedError);
          assert.match(e.message, /src\/math\.ts#add is a function, not a class/);
          return true;
        });
      } finally {
        await session.close();
      }
    });

    it("bad service options are refused before a session is made", async () => {
      const math = runner.module<typeof mathModule>("src/math.ts");
      await assert.rejects(runner.service(math, "add", { warmup: -1 }), { field: "warmup" });
      await assert.rejects(runner.service(math, "add", { dependencies: ["--registry=http://evil"] }), {
        field: "dependencies[0]",
      });
    });
  });
});
