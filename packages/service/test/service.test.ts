import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { serve, type ServiceHandle } from "../src/serve.js";
import { type SessionContextInfo } from "../src/handlers.js";
import { BatchQueue, createUnixSocketTransport } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import { within } from "../../../test/support/within.js";

const enc = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const serviceIndex = path.join(repoRoot, "packages/service/src/index.ts");

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null)
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Polls `check` every 20 ms: for a process that is not our child to be gone, which no event tells. */
async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("serve(): the service runtime", () => {
  let dir: string;
  let service: ServiceHandle;
  let entered: SessionContextInfo | undefined;
  let left = 0;
  // Tasks with input "wait:N" finish only once N of them run at the same time.
  let waiting = 0;
  const released: (() => void)[] = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-svc-"));
    service = await serve(
      {
        onSessionEnter(ctx) {
          if (ctx.sessionId === "bad") throw new Error("cannot enter bad");
          entered = ctx;
        },
        async onTaskInvoke({ taskId, sessionId, input }) {
          const s = text(input);
          if (s === "fail") throw new Error(`task ${taskId} failed on purpose`);
          if (s === "bytes") return new Uint8Array([1, 2, 3]);
          if (s === "none") return;
          if (s.startsWith("wait:")) {
            waiting++;
            if (waiting >= Number(s.slice(5))) for (const r of released.splice(0)) r();
            else await new Promise<void>((r) => released.push(r));
          }
          return `${sessionId}/${taskId}:${s}`;
        },
        onSessionLeave() {
          left++;
        },
      },
      { socketPath: path.join(dir, "svc.sock") },
    );
  });
  after(async () => {
    await service.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function connectFlame() {
    const t = createUnixSocketTransport(service.socketPath);
    return { client: createClient(flame.Instance, t.transport), close: t.close };
  }

  test("flame.v1.Instance: session enter, tasks (string and byte output, errors) and leave", async () => {
    const { client, close } = connectFlame();
    try {
      const enter = await client.onSessionEnter(
        create(flame.SessionContextSchema, {
          sessionId: "s1",
          application: { name: "app", command: "/bin/app", workingDirectory: "/w" },
          commonData: enc("common"),
        }),
      );
      assert.equal(enter.returnCode, 0);
      assert.equal(entered?.sessionId, "s1");
      assert.deepEqual(entered?.application, { name: "app", command: "/bin/app", workingDirectory: "/w" });
      assert.equal(text(entered?.commonData), "common");

      const ok = await client.onTaskInvoke({ taskId: "1", sessionId: "s1", input: enc("hello") });
      assert.equal(ok.returnCode, 0);
      assert.equal(text(ok.output), "s1/1:hello");
      const bytes = await client.onTaskInvoke({ taskId: "2", sessionId: "s1", input: enc("bytes") });
      assert.deepEqual([...(bytes.output ?? [])], [1, 2, 3]);
      const none = await client.onTaskInvoke({ taskId: "3", sessionId: "s1", input: enc("none") });
      assert.equal(none.returnCode, 0);
      assert.equal(none.output, undefined);
      const failed = await client.onTaskInvoke({ taskId: "4", sessionId: "s1", input: enc("fail") });
      assert.equal(failed.returnCode, -1);
      assert.equal(failed.message, "task 4 failed on purpose");

      const bad = await client.onSessionEnter(create(flame.SessionContextSchema, { sessionId: "bad" }));
      assert.equal(bad.returnCode, -1);
      assert.equal(bad.message, "cannot enter bad");

      const leave = await client.onSessionLeave({});
      assert.equal(leave.returnCode, 0);
      assert.equal(left, 1);
    } finally {
      close();
    }
  });

  test("kiln.v1.Instance/Invoke: an empty first response, then concurrent tasks in batches", async () => {
    const t = createUnixSocketTransport(service.socketPath);
    const requests = new BatchQueue<flame.TaskContext>();
    try {
      const client = createClient(kiln.Instance, t.transport);
      const responses = client
        .invoke(
          (async function* () {
            for await (const tasks of requests) yield create(kiln.InvokeRequestSchema, { tasks });
          })(),
        )
        [Symbol.asyncIterator]();
      const first = await within(responses.next(), 5_000, "the first response");
      assert.equal(first.done, false);
      assert.equal(first.value.outcomes.length, 0, "the first response is empty");

      // 20 tasks that can only finish once all 20 run at once, plus plain ones and a failing one.
      waiting = 0;
      const n = 20;
      for (let i = 1; i <= n; i++)
        requests.push(create(flame.TaskContextSchema, { taskId: `w${i}`, sessionId: "s2", input: enc(`wait:${n}`) }));
      await new Promise((r) => setImmediate(r));
      for (let i = 1; i <= 100; i++)
        requests.push(create(flame.TaskContextSchema, { taskId: `p${i}`, sessionId: "s2", input: enc(`x${i}`) }));
      requests.push(create(flame.TaskContextSchema, { taskId: "f", sessionId: "s2", input: enc("fail") }));

      const results = new Map<string, flame.TaskResult>();
      let responseCount = 0;
      while (results.size < n + 101) {
        const r = await within(responses.next(), 10_000, `outcomes (have ${results.size})`);
        assert.equal(r.done, false, "the stream ended early");
        responseCount++;
        for (const o of r.value.outcomes) results.set(o.taskId, o.result!);
      }
      assert.ok(responseCount < n + 101, `outcomes came batched (${responseCount} responses for ${n + 101} tasks)`);
      for (let i = 1; i <= n; i++) assert.equal(text(results.get(`w${i}`)?.output), `s2/w${i}:wait:${n}`);
      for (let i = 1; i <= 100; i++) assert.equal(text(results.get(`p${i}`)?.output), `s2/p${i}:x${i}`);
      assert.equal(results.get("f")?.returnCode, -1);
      assert.equal(results.get("f")?.message, "task f failed on purpose");

      requests.end();
      const end = await within(responses.next(), 5_000, "the end of the stream");
      assert.equal(end.done, true, "the stream ends once the agent half-closes and tasks are done");
    } finally {
      requests.end();
      t.close();
    }
  });

  test("garbage bytes on the socket end that connection only", async () => {
    for (const garbage of [Buffer.from("GET / HTTP/1.1\r\n\r\n"), Buffer.alloc(4096, 0xff)]) {
      const socket = net.connect(service.socketPath);
      await new Promise<void>((resolve) => {
        socket.on("connect", () => socket.end(garbage));
        socket.resume();
        socket.on("error", () => resolve());
        socket.on("close", () => resolve());
      });
    }
    const { client, close } = connectFlame();
    try {
      const res = await client.onTaskInvoke({ taskId: "g", sessionId: "s3", input: enc("still") });
      assert.equal(text(res.output), "s3/g:still");
    } finally {
      close();
    }
  });
});

describe("serve(): socket and process handling", () => {
  let dir: string;
  const children: ChildProcess[] = [];
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-svc-"));
  });
  after(async () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      await exited(c);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function node(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
    const child = spawn(process.execPath, args, { cwd: repoRoot, env: { ...process.env, ...env }, stdio: "pipe" });
    children.push(child);
    return child;
  }

  test("without a socket path it fails with a clear error", async () => {
    const saved = [process.env.KILN_INSTANCE_ENDPOINT, process.env.FLAME_INSTANCE_ENDPOINT];
    delete process.env.KILN_INSTANCE_ENDPOINT;
    delete process.env.FLAME_INSTANCE_ENDPOINT;
    try {
      await assert.rejects(serve({ onTaskInvoke: () => "x" }), /KILN_INSTANCE_ENDPOINT or FLAME_INSTANCE_ENDPOINT/);
    } finally {
      if (saved[0] !== undefined) process.env.KILN_INSTANCE_ENDPOINT = saved[0];
      if (saved[1] !== undefined) process.env.FLAME_INSTANCE_ENDPOINT = saved[1];
    }
  });

  test("replaces a stale socket file, refuses a regular file and a live socket", async () => {
    const stale = path.join(dir, "stale.sock");
    const holder = node([
      "-e",
      `require("net").createServer().listen(${JSON.stringify(stale)}, () => console.log("up"))`,
    ]);
    await within(new Promise((r) => holder.stdout!.once("data", r)), 10_000, "the socket holder");
    await assert.rejects(serve({ onTaskInvoke: () => "x" }, { socketPath: stale }), /already serves/);
    holder.kill("SIGKILL");
    await exited(holder);
    assert.ok(fs.existsSync(stale), "a killed process leaves its socket file behind");
    const handle = await serve({ onTaskInvoke: () => "x" }, { socketPath: stale });
    await handle.close();
    assert.ok(!fs.existsSync(stale), "close() removes the socket");

    const regular = path.join(dir, "regular.sock");
    fs.writeFileSync(regular, "data");
    await assert.rejects(serve({ onTaskInvoke: () => "x" }, { socketPath: regular }), /not a socket/);
    assert.equal(fs.readFileSync(regular, "utf8"), "data");
  });

  test("a service started from the environment exits on SIGTERM and removes its socket", async () => {
    const socketPath = path.join(dir, "env.sock");
    const script =
      `import { serve } from ${JSON.stringify(serviceIndex)};\n` +
      `await serve({ onTaskInvoke: () => "x" });\nconsole.log("serving");\n`;
    const child = node(["--import", "tsx", "--input-type=module", "-e", script], {
      FLAME_INSTANCE_ENDPOINT: socketPath,
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    await within(new Promise((r) => child.stdout!.once("data", r)), 20_000, `the service to start (${stderr})`);
    assert.ok(fs.existsSync(socketPath));
    child.kill("SIGTERM");
    const { code } = await within(exited(child), 10_000, "the service to exit");
    assert.equal(code, 0, stderr);
    assert.ok(!fs.existsSync(socketPath), "the socket is removed before the process exits");
  });

  test("a service exits once the agent that started it is gone, even if it died first", async () => {
    const serviceScript = (name: string) =>
      `import { serve } from ${JSON.stringify(serviceIndex)};\n` +
      `await serve({ onTaskInvoke: () => "x" }, { socketPath: ${JSON.stringify(path.join(dir, name))}, exitOnSignal: true });\n` +
      `console.log(process.pid);\n`;
    // The "agent" starts the service, then is killed: its service must follow.
    const agentScript =
      `const { spawn } = require("node:child_process");\n` +
      `const c = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", ${JSON.stringify(serviceScript("orphan.sock"))}],` +
      ` { env: { ...process.env, KILN_AGENT_PID: String(process.pid) }, stdio: ["ignore", "inherit", "inherit"], detached: true });\n`;
    const agent = node(["-e", agentScript]);
    const servicePid = Number(
      await within(new Promise<Buffer>((r) => agent.stdout!.once("data", r)), 20_000, "the service to start"),
    );
    agent.kill("SIGKILL");
    await exited(agent);
    await waitFor(() => !isAlive(servicePid), 5_000, "the orphaned service to exit");

    // An agent that died before serve() ran.
    const dead = node(["-e", ""]);
    await exited(dead);
    const late = node(["--import", "tsx", "--input-type=module", "-e", serviceScript("late.sock")], {
      KILN_AGENT_PID: String(dead.pid),
    });
    const { code } = await within(exited(late), 20_000, "the service of a dead agent to exit");
    assert.equal(code, 0);
  });
});
