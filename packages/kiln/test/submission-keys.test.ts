import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SubmissionKeys } from "../src/control/submission-keys.js";

const submission = (sessionId: string, key: string, firstTaskId: number, time: number) => ({
  sessionId,
  key,
  firstTaskId,
  count: 3,
  time,
});

describe("the control plane's memory of CreateTasks idempotency keys", () => {
  it("finds a key in the session that used it, and not in another", () => {
    const keys = new SubmissionKeys(60_000);
    keys.remember(submission("s-1", "k", 7, 1_000));
    assert.equal(keys.find("s-1", "k", 2_000)?.firstTaskId, 7);
    assert.equal(keys.find("s-2", "k", 2_000), undefined);
    assert.equal(keys.find("s-1", "other", 2_000), undefined);
  });

  it("forgets keys older than the retention, oldest first, and keeps the younger ones", () => {
    const keys = new SubmissionKeys(60_000);
    keys.remember(submission("s-1", "old", 1, 1_000));
    keys.remember(submission("s-1", "young", 4, 30_000));
    assert.equal(keys.find("s-1", "old", 61_000)?.firstTaskId, 1, "exactly at the retention it is still known");
    assert.equal(keys.find("s-1", "old", 61_001), undefined);
    assert.equal(keys.find("s-1", "young", 61_001)?.firstTaskId, 4);
    assert.equal(keys.size, 1);
    assert.equal(keys.expire(200_000), 140_000, "expire returns the cut-off for the store");
    assert.equal(keys.size, 0);
  });

  it("forgets every key of a deleted session", () => {
    const keys = new SubmissionKeys(60_000);
    keys.remember(submission("s-1", "a", 1, 1_000));
    keys.remember(submission("s-2", "a", 1, 1_000));
    keys.forgetSession("s-1");
    assert.equal(keys.find("s-1", "a", 2_000), undefined);
    assert.equal(keys.find("s-2", "a", 2_000)?.firstTaskId, 1);
  });
});
