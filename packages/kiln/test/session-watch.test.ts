import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { flame, kiln } from "@kiln/protocol/proto";
import { connect } from "@kiln/sdk";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { untilChanged } from "../../../test/support/until.js";
import { envelope, EnvelopeReader } from "../../protocol/src/transport/envelopes.js";
import { startAgent, type Agent } from "../src/agent/agent.js";
import { enc, fixtureApp, text } from "./support/agent-helpers.js";
import { startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";
import { waitFor } from "./support/processes.js";
import { TcpProxy } from "./support/tcp-proxy.js";

const { TaskState } = flame;
/** An empty config file, so the user's own ~/.kiln/config.yaml stays out of the tests. */
const EMPTY_CONFIG = "/dev/null";

/**
 * A WatchSession stream read straight off HTTP/2, so a test can stop reading it (`pause`) and the
 * control plane sees a client that does not keep up, as over a slow network.
 */
class RawWatch {
  readonly messages: kiln.WatchSessionResponse[] = [];
  readonly changes = new EventEmitter();
  status: { code: number; message: string } | undefined;
  private readonly client: http2.ClientHttp2Session;
  private readonly stream: http2.ClientHttp2Stream;

  constructor(endpoint: string, request: MessageInitShape<typeof kiln.WatchSessionRequestSchema>) {
    this.client = http2.connect(endpoint);
    this.client.on("error", () => undefined);
    this.stream = this.client.request({
      ":method": "POST",
      ":path": `/${kiln.Frontend.typeName}/WatchSession`,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const reader = new EnvelopeReader(64 * 1024 * 1024);
    this.stream.on("data", (chunk: Buffer) => {
      for (const m of reader.push(chunk)) this.messages.push(fromBinary(kiln.WatchSessionResponseSchema, m));
      this.changes.emit("change");
    });
    this.stream.on("trailers", (trailers) => {
      this.status = { code: Number(trailers["grpc-status"]), message: String(trailers["grpc-message"] ?? "") };
      this.changes.emit("change");
    });
    this.stream.on("error", () => undefined);
    this.stream.end(envelope(kiln.WatchSessionRequestSchema, request));
  }

  /** Stops reading: HTTP/2 flow control then stops the control plane's writes. */
  pause(): void {
    this.stream.pause();
  }

  resume(): void {
    this.stream.resume();
  }

  updates(): kiln.TaskUpdate[] {
    return this.messages.flatMap((m) => m.updates);
  }

  /** The latest update of each task. */
  latest(): Map<string, kiln.TaskUpdate> {
    const byId = new Map<string, kiln.TaskUpdate>();
    for (const u of this.updates()) byId.set(u.taskId, u);
    return byId;
  }

  until<T>(check: () => T | undefined | false, what: string, ms = 60_000): Promise<T> {
    return untilChanged(this.changes, check, ms, () => `${what} (${this.messages.length} messages so far)`);
  }

  close(): void {
    this.stream.close();
    this.client.close();
  }
}

/** Reads a Connect watch until `done` says so; returns every message. */
async function readWatch(
  t: TestControlPlane,
  request: MessageInitShape<typeof kiln.WatchSessionRequestSchema>,
  done: (messages: kiln.WatchSessionResponse[]) => boolean,
): Promise<kiln.WatchSessionResponse[]> {
  const messages: kiln.WatchSessionResponse[] = [];
  const stop = new AbortController();
  try {
    for await (const m of t.kiln.watchSession(request, { signal: stop.signal, timeoutMs: 60_000 })) {
      messages.push(m);
      if (done(messages)) return messages;
    }
    throw new Error("the watch ended early");
  } finally {
    stop.abort();
  }
}

const updatesOf = (messages: kiln.WatchSessionResponse[]) => messages.flatMap((m) => m.updates);
const lastThrough = (messages: kiln.WatchSessionResponse[]) =>
  messages.reduce((seq, m) => (m.throughSeq > seq ? m.throughSeq : seq), 0n);
const sessionSpec = (application: string) => create(flame.SessionSpecSchema, { application });

async function rejects(p: Promise<unknown>, field: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ConnectError, String(e));
    assert.equal(e.code, Code.InvalidArgument, e.message);
    assert.ok(e.message.includes(field), `"${e.message}" names ${field}`);
    return true;
  });
}

describe("session watches resume", () => {
  it("a watcher that reconnects with after_seq gets only what it missed, also after a control-plane restart", async () => {
    const dataDir = tempDir("watch-resume");
    let t = await startTestControlPlane({ dataDir });
    try {
      await t.frontend.createSession({ sessionId: "r", session: sessionSpec("kiln-ping") });
      // No agent: tasks stay pending, and every change is a creation or a cancel the test makes.
      await t.kiln.createTasks({ sessionId: "r", inputs: Array.from({ length: 10 }, () => new Uint8Array()) });
      const first = await readWatch(t, { sessionId: "r", snapshot: true }, (ms) => ms.some((m) => m.ready));
      assert.equal(updatesOf(first).length, 10);
      const seen = lastThrough(first);
      assert.equal(seen, 10n, "the snapshot's last message says it holds every change up to 10");

      await t.kiln.createTasks({ sessionId: "r", inputs: Array.from({ length: 5 }, () => new Uint8Array()) });
      await t.kiln.cancelTasks({ sessionId: "r", taskIds: ["1", "2", "3"] });
      const resumed = await readWatch(t, { sessionId: "r", afterSeq: seen }, (ms) => ms.some((m) => m.ready));
      const missed = updatesOf(resumed);
      assert.deepEqual(
        missed.map((u) => `${u.taskId}:${TaskState[u.state]}`),
        [
          "1:Cancelled",
          "2:Cancelled",
          "3:Cancelled",
          "11:Pending",
          "12:Pending",
          "13:Pending",
          "14:Pending",
          "15:Pending",
        ],
        "only the 8 changes made while it was away, in task id order",
      );
      const beforeRestart = lastThrough(resumed);
      assert.equal(beforeRestart, 18n);

      await t.close();
      t = await startTestControlPlane({ dataDir });
      await t.kiln.createTasks({ sessionId: "r", inputs: [new Uint8Array(), new Uint8Array()] });
      const afterRestart = await readWatch(t, { sessionId: "r", afterSeq: beforeRestart }, (ms) =>
        ms.some((m) => m.ready),
      );
      assert.deepEqual(
        updatesOf(afterRestart).map((u) => `${u.taskId}:${u.seq}`),
        ["16:19", "17:20"],
        "numbering went on across the restart, and only the 2 new tasks came",
      );
      // Then live: a cancel made after the resume arrives with the next number.
      const live = readWatch(t, { sessionId: "r", afterSeq: 20n }, (ms) => updatesOf(ms).length === 1);
      await t.kiln.cancelTasks({ sessionId: "r", taskIds: ["16"] });
      const [cancelled] = updatesOf(await live);
      assert.equal(cancelled?.taskId, "16");
      assert.equal(cancelled?.seq, 21n);
    } finally {
      await t.close();
    }
  });

  it("refuses a resume it cannot serve and watcher keys that are too long, creating nothing", async () => {
    const t = await startTestControlPlane();
    try {
      await t.frontend.createSession({ sessionId: "bad", session: sessionSpec("kiln-ping") });
      await t.kiln.createTasks({ sessionId: "bad", inputs: [new Uint8Array()] });
      const drain = async (request: MessageInitShape<typeof kiln.WatchSessionRequestSchema>) => {
        for await (const m of t.kiln.watchSession(request, { timeoutMs: 10_000 })) if (m.ready) return;
      };
      await rejects(drain({ sessionId: "bad", snapshot: true, afterSeq: 0n }), "after_seq");
      await rejects(drain({ sessionId: "bad", afterSeq: 2n }), "after_seq");
      await rejects(drain({ sessionId: "bad", outputsFor: "k".repeat(129) }), "outputs_for");
      await rejects(
        t.kiln.createTasks({ sessionId: "bad", inputs: [new Uint8Array()], outputTo: "k".repeat(129) }),
        "output_to",
      );
      const s = await t.frontend.getSession({ sessionId: "bad" });
      assert.equal(s.status?.pending, 1, "the refused CreateTasks created nothing");
    } finally {
      await t.close();
    }
  });
});

describe("watchers with their own outputs, and slow watchers", () => {
  let t: TestControlPlane;
  let agent: Agent;
  const dataDir = tempDir("watch-outputs");
  /** Small, so a slow watcher passes it with a few hundred tasks. */
  const BOUND = 256 * 1024;

  before(async () => {
    t = await startTestControlPlane({ dataDir, watchBufferBytes: BOUND });
    agent = await startAgent({ endpoint: t.cp.endpoint, workDir: tempDir("watch-agent"), executors: 2 });
    // Its tasks answer "echo:<input>", so a test chooses the size of each output.
    await t.frontend.registerApplication({
      name: "echo",
      application: fixtureApp("agent-test-service.ts", { labels: ["kiln.concurrency=8"] }),
    });
  });

  after(async () => {
    await agent?.close();
    await t?.close();
  });

  /** Waits, on the sessions feed, until `n` tasks of the session have succeeded. */
  async function untilSucceeded(sessionId: string, n: number, onChange: () => void = () => undefined) {
    const stop = new AbortController();
    try {
      for await (const change of t.kiln.watchSessions({ sessionIds: [sessionId] }, { signal: stop.signal })) {
        onChange();
        if (change.sessions.some((s) => (s.status?.succeed ?? 0) >= n)) return;
      }
    } finally {
      stop.abort();
    }
  }

  it("outputs_for: a watcher gets outputs only of tasks created with its key, also when it resumes after a restart", async () => {
    await t.frontend.createSession({ sessionId: "own", session: sessionSpec("echo") });
    const watchers = { a: new RawWatch(t.cp.endpoint, { sessionId: "own", outputsFor: "key-a" }) };
    const b = new RawWatch(t.cp.endpoint, { sessionId: "own", outputsFor: "key-b" });
    const all = new RawWatch(t.cp.endpoint, { sessionId: "own" });
    try {
      for (const w of [watchers.a, b, all]) await w.until(() => w.messages.some((m) => m.ready), "ready");
      await t.kiln.createTasks({ sessionId: "own", inputs: ["a1", "a2", "a3"].map(enc), outputTo: "key-a" });
      await t.kiln.createTasks({ sessionId: "own", inputs: ["b1", "b2", "b3"].map(enc), outputTo: "key-b" });
      await t.kiln.createTasks({ sessionId: "own", inputs: ["n1", "n2"].map(enc) });
      const outputs = async (w: RawWatch) => {
        const done = () => [...w.latest().values()].filter((u) => u.state === TaskState.Succeed).length === 8;
        await w.until(done, "8 succeeded tasks");
        return [...w.latest().values()]
          .filter((u) => u.output !== undefined)
          .map((u) => text(u.output))
          .sort();
      };
      assert.deepEqual(await outputs(watchers.a), ["echo:a1", "echo:a2", "echo:a3"]);
      assert.deepEqual(await outputs(b), ["echo:b1", "echo:b2", "echo:b3"]);
      assert.equal((await outputs(all)).length, 8, "a watcher without a key gets every output");
    } finally {
      for (const w of [watchers.a, b, all]) w.close();
    }
    // The key is stored with the tasks: a resume read from the store after a restart keeps to it.
    await agent.close();
    await t.close();
    t = await startTestControlPlane({ dataDir, watchBufferBytes: BOUND });
    agent = await startAgent({ endpoint: t.cp.endpoint, workDir: tempDir("watch-agent"), executors: 2 });
    const resumed = await readWatch(t, { sessionId: "own", afterSeq: 0n, outputsFor: "key-a" }, (ms) =>
      ms.some((m) => m.ready),
    );
    const withOutput = updatesOf(resumed).filter((u) => u.output !== undefined);
    assert.equal(updatesOf(resumed).length, 8);
    assert.deepEqual(withOutput.map((u) => text(u.output)).sort(), ["echo:a1", "echo:a2", "echo:a3"]);
  });

  it("two SDK clients on one session do not receive each other's outputs", async () => {
    await t.frontend.createSession({ sessionId: "two", session: sessionSpec("echo") });
    const proxies = [new TcpProxy(), new TcpProxy()];
    const clients = await Promise.all(
      proxies.map(async (p) => {
        p.target = t.cp.port;
        return connect({ endpoint: await p.start(), configPath: EMPTY_CONFIG });
      }),
    );
    try {
      const OUTPUT = 16 * 1024;
      const TASKS = 20;
      // One Session object per client: its run() calls share one watch stream.
      const runs = clients.map((c, i) => {
        const session = c.session("two");
        return Promise.all(
          Array.from({ length: TASKS }, async (_, n) => {
            const input = `${i}-${n}-`.padEnd(OUTPUT, "x");
            assert.equal(text(await session.run(input)), `echo:${input}`);
          }),
        );
      });
      await Promise.all(runs);
      const own = TASKS * OUTPUT;
      for (const p of proxies)
        assert.ok(
          p.bytesDown < own * 1.5,
          `a client received ${p.bytesDown} bytes for ${own} bytes of its own outputs (both clients': ${2 * own})`,
        );
    } finally {
      for (const c of clients) c.close();
      for (const p of proxies) await p.close();
    }
  });

  it("a watcher that stops reading holds a bounded number of bytes, and once it reads again gets every task's final state", async () => {
    await t.frontend.createSession({ sessionId: "slow", session: sessionSpec("echo") });
    const slow = new RawWatch(t.cp.endpoint, { sessionId: "slow" });
    try {
      await slow.until(() => slow.messages.some((m) => m.ready), "ready");
      slow.pause();
      const TASKS = 200;
      const inputs = Array.from({ length: TASKS }, (_, i) => enc(`${i}:`.padEnd(32 * 1024, "y")));
      await t.kiln.createTasks({ sessionId: "slow", inputs });
      let maxHeld = 0;
      let fellBehind = false;
      await untilSucceeded("slow", TASKS, () => {
        const stats = t.cp.watchStats();
        maxHeld = Math.max(maxHeld, stats.heldBytes);
        fellBehind ||= stats.behind > 0;
      });
      const total = TASKS * 32 * 1024;
      assert.ok(fellBehind, "the watcher fell behind");
      // The bound, plus the one message the stream is sending when it stops.
      assert.ok(maxHeld <= 2 * BOUND, `held at most ${maxHeld} bytes for ${total} bytes of outputs`);

      slow.resume();
      const final = await slow.until(() => {
        const latest = slow.latest();
        const done = [...latest.values()].filter((u) => u.state === TaskState.Succeed).length === TASKS;
        return done && latest;
      }, "every task's final state");
      for (let i = 0; i < TASKS; i++)
        assert.equal(text(final.get(String(i + 1))?.output), `echo:${text(inputs[i])}`, `task ${i + 1}'s output`);
      assert.equal(t.cp.watchStats().behind, 0, "resynchronised");
      assert.equal(slow.status, undefined, "the stream goes on");
    } finally {
      slow.close();
    }
  });

  it("a watcher behind for longer than the limit has its stream ended with RESOURCE_EXHAUSTED", async () => {
    const quick = await startTestControlPlane({ watchBufferBytes: 64 * 1024, watchBehindLimitMs: 200 });
    const quickAgent = await startAgent({ endpoint: quick.cp.endpoint, workDir: tempDir("watch-agent"), executors: 1 });
    try {
      await quick.frontend.registerApplication({ name: "echo", application: fixtureApp("agent-test-service.ts") });
      await quick.frontend.createSession({ sessionId: "late", session: sessionSpec("echo") });
      const late = new RawWatch(quick.cp.endpoint, { sessionId: "late" });
      await late.until(() => late.messages.some((m) => m.ready), "ready");
      late.pause();
      const inputs = Array.from({ length: 40 }, (_, i) => enc(`${i}:`.padEnd(32 * 1024, "z")));
      await quick.kiln.createTasks({ sessionId: "late", inputs });
      // The control plane lets go of the watcher once its limit has passed.
      await waitFor("the late watcher to be dropped", () => quick.cp.watchStats().sessionWatchers === 0, 60_000);
      late.resume();
      const status = await late.until(() => late.status, "the stream's status");
      assert.equal(status.code, Code.ResourceExhausted);
      assert.match(decodeURIComponent(status.message), /watcher fell behind.*after_seq \d+/);
      late.close();
    } finally {
      await quickAgent.close();
      await quick.close();
    }
  });
});
