import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { LazyAbort } from "../src/transport/lazy-abort.js";

describe("LazyAbort: the per-task abort switch", () => {
  test("a signal first read after abort() is already aborted, and listeners run exactly once", () => {
    const abort = new LazyAbort();
    const calls: string[] = [];
    abort.onAbort(() => calls.push("before"));
    assert.equal(abort.aborted, false);
    abort.abort();
    abort.abort();
    abort.onAbort(() => calls.push("after"));
    assert.deepEqual(calls, ["before", "after"]);
    assert.equal(abort.signal.aborted, true);
  });

  test("a signal read before abort() fires its abort event", () => {
    const abort = new LazyAbort();
    const signal = abort.signal;
    let fired = 0;
    signal.addEventListener("abort", () => fired++);
    abort.abort();
    assert.equal(fired, 1);
    assert.equal(abort.signal, signal, "the same signal every time");
  });
});
