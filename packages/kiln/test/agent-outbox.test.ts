import { create } from "@bufbuild/protobuf";
import { kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MAX_COMPLETION_BYTES_PER_MESSAGE, Outbox } from "../src/agent/outbox.js";

const completion = (taskId: number, outputBytes: number) =>
  create(kiln.CompletionSchema, {
    executorId: "e-1",
    sessionId: "s",
    taskId: String(taskId),
    attempt: 1,
    output: new Uint8Array(outputBytes),
  });

describe("the agent's outbox", () => {
  it("splits completions made in one turn so no message carries much more than 4 MiB of outputs", async () => {
    const outbox = new Outbox();
    const abort = new AbortController();
    outbox.openFor(abort.signal);
    // 40 outputs of 1 MiB in one turn: one message would be 40 MiB.
    for (let i = 0; i < 40; i++) outbox.completion(completion(i, 1024 * 1024));
    outbox.end();
    const sizes: number[] = [];
    for (let m = await outbox.next(abort.signal); m; m = await outbox.next(abort.signal)) {
      assert.equal(m.kind.case, "completions");
      if (m.kind.case === "completions")
        sizes.push(m.kind.value.completions.reduce((n, c) => n + (c.output?.byteLength ?? 0), 0));
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
    outbox.completion(completion(1, 10));
    outbox.completion(completion(2, MAX_COMPLETION_BYTES_PER_MESSAGE + 1));
    outbox.completion(completion(3, 10));
    outbox.end();
    const ids: string[][] = [];
    for (let m = await outbox.next(abort.signal); m; m = await outbox.next(abort.signal))
      if (m.kind.case === "completions") ids.push(m.kind.value.completions.map((c) => c.taskId));
    assert.deepEqual(ids, [["1"], ["2"], ["3"]]);
  });
});
