import { create } from "@bufbuild/protobuf";
import { kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Outbox } from "../src/agent/outbox.js";

const completion = (taskId: string, attempt = 1) =>
  create(kiln.CompletionSchema, { executorId: "e-1", sessionId: "s-1", taskId, attempt, returnCode: 0 });

/** Completions of the next message the stream owning `signal` reads (it must be a Completions message). */
async function nextCompletions(outbox: Outbox, signal: AbortSignal): Promise<kiln.Completion[]> {
  const m = await outbox.next(signal);
  assert.equal(m?.kind.case, "completions");
  return m.kind.case === "completions" ? m.kind.value.completions : [];
}

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
