import { create } from "@bufbuild/protobuf";
import { kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MAX_COMPLETION_BYTES_PER_MESSAGE, Outbox } from "../src/agent/outbox.js";

const completion = (taskId: string, attempt = 1) =>
  create(kiln.CompletionSchema, { executorId: "e-1", sessionId: "s-1", taskId, attempt, returnCode: 0 });

/** Completions of the next message the stream owning `signal` reads (it must be a Completions message). */
async function nextCompletions(outbox: Outbox, signal: AbortSignal): Promise<kiln.Completion[]> {
  const m = await outbox.next(signal);
  assert.equal(m?.kind.case, "completions");
  return m.kind.case === "completions" ? m.kind.value.completions : [];
}

/** A completion whose output is `outputBytes` long. */
const sized = (taskId: number, outputBytes: number) =>
  create(kiln.CompletionSchema, {
    executorId: "e-1",
    sessionId: "s",
    taskId: String(taskId),
    attempt: 1,
    output: new Uint8Array(outputBytes),
  });

const ids = (cs: readonly kiln.Completion[]) => cs.map((c) => c.taskId);
const held = (outbox: Outbox) => outbox.waitingTasks("e-1").map((r) => r.taskId);

describe("the agent's outbox keeps completions until the control plane acknowledges them", () => {
  it("numbers completions from 1 in the order they were made", async () => {
    const outbox = new Outbox();
    const stream = new AbortController();
    outbox.openFor(stream.signal);
    outbox.completion(completion("1"));
    outbox.completion(completion("2"));
    const sent = await nextCompletions(outbox, stream.signal);
    assert.deepEqual(ids(sent), ["1", "2"]);
    assert.deepEqual(
      sent.map((c) => c.seq),
      [1n, 2n],
    );
  });

  it("still reports a sent completion's task as held until the ack, then forgets it", async () => {
    const outbox = new Outbox();
    const stream = new AbortController();
    outbox.openFor(stream.signal);
    outbox.completion(completion("1"));
    outbox.completion(completion("2"));
    await nextCompletions(outbox, stream.signal);
    assert.deepEqual(held(outbox), ["1", "2"]);
    outbox.acknowledged(1n);
    assert.deepEqual(held(outbox), ["2"]);
    outbox.acknowledged(2n);
    assert.deepEqual(held(outbox), []);
  });

  it("resends what a lost stream never got acknowledged, first and in order, on the next stream", async () => {
    const outbox = new Outbox();
    const first = new AbortController();
    outbox.openFor(first.signal);
    for (const id of ["1", "2", "3"]) outbox.completion(completion(id));
    await nextCompletions(outbox, first.signal);
    outbox.acknowledged(1n);
    first.abort();
    outbox.completion(completion("4"));
    await new Promise((resolve) => setImmediate(resolve));
    const second = new AbortController();
    outbox.openFor(second.signal);
    assert.deepEqual(ids(await nextCompletions(outbox, second.signal)), ["2", "3"]);
    assert.deepEqual(ids(await nextCompletions(outbox, second.signal)), ["4"]);
    outbox.acknowledged(4n);
    assert.deepEqual(held(outbox), []);
  });

  it("drops unacknowledged completions of tasks the control plane says to forget", async () => {
    const outbox = new Outbox();
    const first = new AbortController();
    outbox.openFor(first.signal);
    outbox.completion(completion("1"));
    outbox.completion(completion("2"));
    await nextCompletions(outbox, first.signal);
    first.abort();
    outbox.forget([create(kiln.TaskRefSchema, { sessionId: "s-1", taskId: "1", attempt: 1 })]);
    assert.deepEqual(held(outbox), ["2"]);
    const second = new AbortController();
    outbox.openFor(second.signal);
    assert.deepEqual(ids(await nextCompletions(outbox, second.signal)), ["2"]);
  });

  it("ends the stream only once everything sent is acknowledged", async () => {
    const outbox = new Outbox();
    const stream = new AbortController();
    outbox.openFor(stream.signal);
    outbox.completion(completion("1"));
    outbox.end();
    await nextCompletions(outbox, stream.signal);
    let ended = false;
    const last = outbox.next(stream.signal).then((m) => {
      ended = true;
      return m;
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(ended, false, "the stream ended with a completion unacknowledged");
    outbox.acknowledged(1n);
    assert.equal(await last, undefined);
  });
});

describe("the agent's outbox keeps each message within its output budget", () => {
  it("splits completions made in one turn so no message carries much more than 4 MiB of outputs", async () => {
    const outbox = new Outbox();
    const abort = new AbortController();
    outbox.openFor(abort.signal);
    // 40 outputs of 1 MiB in one turn: one message would be 40 MiB.
    for (let i = 0; i < 40; i++) outbox.completion(sized(i, 1024 * 1024));
    outbox.end();
    const sizes: number[] = [];
    for (let m = await outbox.next(abort.signal); m; m = await outbox.next(abort.signal)) {
      assert.equal(m.kind.case, "completions");
      if (m.kind.case === "completions") {
        sizes.push(m.kind.value.completions.reduce((n, c) => n + (c.output?.byteLength ?? 0), 0));
        outbox.acknowledged(m.kind.value.completions.at(-1)!.seq);
      }
    }
    assert.equal(
      sizes.reduce((a, b) => a + b, 0),
      40 * 1024 * 1024,
      "every completion is sent",
    );
    assert.ok(sizes.length >= 10, `${sizes.length} messages`);
    for (const size of sizes) assert.ok(size <= MAX_COMPLETION_BYTES_PER_MESSAGE, `a message of ${size} bytes`);
  });

  it("sends an output larger than the per-message budget alone", async () => {
    const outbox = new Outbox();
    const abort = new AbortController();
    outbox.openFor(abort.signal);
    outbox.completion(sized(1, 10));
    outbox.completion(sized(2, MAX_COMPLETION_BYTES_PER_MESSAGE + 1));
    outbox.completion(sized(3, 10));
    outbox.end();
    const sent: string[][] = [];
    for (let m = await outbox.next(abort.signal); m; m = await outbox.next(abort.signal))
      if (m.kind.case === "completions") {
        sent.push(m.kind.value.completions.map((c) => c.taskId));
        outbox.acknowledged(m.kind.value.completions.at(-1)!.seq);
      }
    assert.deepEqual(sent, [["1"], ["2"], ["3"]]);
  });

  it("keeps resent completions within the budget too", async () => {
    const outbox = new Outbox();
    const first = new AbortController();
    outbox.openFor(first.signal);
    for (let i = 0; i < 12; i++) outbox.completion(sized(i, 1024 * 1024));
    for (let read = 0; read < 12;) {
      const m = await outbox.next(first.signal);
      if (m?.kind.case === "completions") read += m.kind.value.completions.length;
    }
    first.abort();
    const second = new AbortController();
    outbox.openFor(second.signal);
    const sizes: number[] = [];
    for (let resent = 0; resent < 12;) {
      const m = await outbox.next(second.signal);
      assert.equal(m?.kind.case, "completions");
      if (m.kind.case !== "completions") break;
      resent += m.kind.value.completions.length;
      sizes.push(m.kind.value.completions.reduce((n, c) => n + (c.output?.byteLength ?? 0), 0));
    }
    assert.ok(sizes.length >= 3, `${sizes.length} messages`);
    for (const size of sizes) assert.ok(size <= MAX_COMPLETION_BYTES_PER_MESSAGE, `a message of ${size} bytes`);
  });
});
