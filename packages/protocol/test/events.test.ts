import { flame } from "../src/proto/index.js";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { describeEventCode, eventMessage, SessionEvent } from "../src/events.js";

// Task events carry the state the task moved to as their code; session events carry a SessionEvent.
const TASK_EVENT_CODES = Object.values(flame.TaskState).filter((v): v is number => typeof v === "number");
const SESSION_EVENT_CODES = Object.values(SessionEvent);

describe("event codes", () => {
  it("every event code in events.ts gets a non-empty message, with or without details", () => {
    assert.ok(SESSION_EVENT_CODES.length >= 6 && TASK_EVENT_CODES.length === 5);
    for (const code of [...SESSION_EVENT_CODES, ...TASK_EVENT_CODES]) {
      const description = describeEventCode(code);
      assert.ok(description.trim().length > 0, `code ${code}`);
      assert.notEqual(description, "no message", `code ${code} has a description`);
      for (const detail of [undefined, "", "  \n"]) assert.equal(eventMessage(code, detail), description);
      assert.equal(eventMessage(code, "disk full"), "disk full");
    }
  });

  it("session event codes do not collide with task states, so one code means one thing", () => {
    for (const code of SESSION_EVENT_CODES) assert.ok(!TASK_EVENT_CODES.includes(code), `code ${code}`);
    assert.equal(new Set(SESSION_EVENT_CODES).size, SESSION_EVENT_CODES.length);
  });

  it("a code Kiln does not know (a Flame server's) still reads as something", () => {
    assert.equal(eventMessage(4242, undefined), "no message");
  });
});
