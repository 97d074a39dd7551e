import { create } from "@bufbuild/protobuf";
import { flame } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  executorTable,
  filterSessions,
  nodeTable,
  sessionTable,
  type SessionFilter,
} from "../src/cli/commands/list.js";
import { UsageError } from "../src/cli/exit-codes.js";
import { parseStates, SESSION_STATES, TASK_STATES } from "../src/cli/state-filter.js";
import { filterTaskRows, taskRow, taskRowsJson, taskTable } from "../src/cli/task-list.js";
import { pingSummaryText } from "../src/cli/commands/ping.js";
import { formatMemory } from "@kiln/protocol";
import { formatEvent, formatPayload } from "../src/cli/format.js";
import { percentile, summarize } from "../src/cli/ping-workload.js";
import { renderTable } from "../src/cli/table.js";

const GiB = 2n ** 30n;

function session(id: string, state: flame.SessionState, created: number): flame.Session {
  return create(flame.SessionSchema, {
    metadata: { id, name: id },
    spec: { application: "kiln-ping", priority: 3, resreq: { cpu: 1n, memory: GiB, gpu: 0 } },
    status: { state, creationTime: BigInt(created), pending: 1, running: 2, succeed: 3, failed: 4, cancelled: 5 },
  });
}

const cells = (table: string): string[][] =>
  table
    .trimEnd()
    .split("\n")
    .map((line) => line.split(/\s{2,}/));

describe("tables", () => {
  it("aligns columns and leaves no trailing spaces", () => {
    const out = renderTable(
      ["Name", "State"],
      [
        ["kiln-ping", "Enabled"],
        ["a", ""],
      ],
    );
    assert.equal(out, "Name       State\nkiln-ping  Enabled\na\n");
  });

  it("lists sessions with Flame's columns and Cancelled, open sessions first", () => {
    const rows = cells(
      sessionTable([
        session("closed-old", flame.SessionState.Closed, 1_000),
        session("open-new", flame.SessionState.Open, 3_000),
        session("open-old", flame.SessionState.Open, 2_000),
      ]),
    );
    assert.deepEqual(rows[0], [
      "ID",
      "State",
      "App",
      "Resources",
      "Priority",
      "Pending",
      "Running",
      "Succeed",
      "Failed",
      "Cancelled",
      "Created",
    ]);
    assert.deepEqual(
      rows.slice(1).map((r) => r[0]),
      ["open-old", "open-new", "closed-old"],
    );
    assert.deepEqual(rows[1]!.slice(1, 10), ["Open", "kiln-ping", "cpu=1,mem=1Gi,gpu=0", "3", "1", "2", "3", "4", "5"]);
    assert.match(rows[1]![10]!, /^\d\d:\d\d:\d\d$/);
  });

  it("filters sessions by state and application, then keeps the first --limit in list order", () => {
    const other = create(flame.SessionSchema, {
      metadata: { id: "other-app" },
      spec: { application: "echo" },
      status: { state: flame.SessionState.Open, creationTime: 500n },
    });
    const all = [
      session("closed-old", flame.SessionState.Closed, 1_000),
      session("open-new", flame.SessionState.Open, 3_000),
      session("open-old", flame.SessionState.Open, 2_000),
      other,
    ];
    const ids = (f: SessionFilter) => filterSessions(all, f).map((s) => s.metadata?.id);
    assert.deepEqual(ids({}), ["other-app", "open-old", "open-new", "closed-old"]);
    assert.deepEqual(ids({ states: new Set([flame.SessionState.Closed]) }), ["closed-old"]);
    assert.deepEqual(ids({ app: "kiln-ping" }), ["open-old", "open-new", "closed-old"]);
    assert.deepEqual(ids({ app: "kiln-ping", states: new Set([flame.SessionState.Open]), limit: 1 }), ["open-old"]);
  });

  it("parses --state as Flame's names, several at once, and names the allowed ones for a bad one", () => {
    assert.deepEqual(
      [...parseStates("failed, Cancelled", TASK_STATES, "task")],
      [flame.TaskState.Failed, flame.TaskState.Cancelled],
    );
    assert.deepEqual([...parseStates("open", SESSION_STATES, "session")], [flame.SessionState.Open]);
    assert.throws(
      () => parseStates("done", TASK_STATES, "task"),
      (err: Error) =>
        err instanceof UsageError &&
        err.message === '--state: "done" is not a task state (allowed: pending, running, succeed, failed, cancelled)',
    );
    assert.throws(() => parseStates("running", SESSION_STATES, "session"), /allowed: open, closed/);
    assert.throws(() => parseStates("constructor", TASK_STATES, "task"), /not a task state/);
  });

  it("lists tasks with their last change and, once failed or cancelled, why", () => {
    const task = (id: string, state: flame.TaskState, message: string) =>
      create(flame.TaskSchema, {
        metadata: { id },
        spec: { sessionId: "s-1" },
        status: { state, creationTime: 1_000n, events: [{ code: state, message, creationTime: 2_000n }] },
      });
    const rows = [
      taskRow(task("1", flame.TaskState.Succeed, "completed on vm")),
      taskRow(task("2", flame.TaskState.Cancelled, "cancelled by request")),
      taskRow(task("3", flame.TaskState.Failed, "boom")),
    ];
    assert.deepEqual(rows[0], { session: "s-1", task: "1", state: flame.TaskState.Succeed, time: 2_000 });
    const table = cells(taskTable(rows, false));
    assert.deepEqual(table[0], ["Task", "State", "Updated", "Message"]);
    assert.deepEqual(
      table.slice(1).map((r) => [r[0], r[1], r[3]]),
      [
        ["1", "Succeed", undefined],
        ["2", "Cancelled", "cancelled by request"],
        ["3", "Failed", "boom"],
      ],
    );
    assert.deepEqual(cells(taskTable(rows, true))[0], ["Session", "Task", "State", "Updated", "Message"]);
    const kept = filterTaskRows(rows, {
      states: new Set([flame.TaskState.Failed, flame.TaskState.Cancelled]),
      limit: 1,
    });
    assert.deepEqual(taskRowsJson(kept), {
      tasks: [{ session: "s-1", task: "2", state: "Cancelled", time: 2_000, message: "cancelled by request" }],
    });
  });

  it("lists executors and nodes with Flame's columns", () => {
    const executors = cells(
      executorTable([
        create(flame.ExecutorSchema, {
          metadata: { id: "node-1-0" },
          spec: { node: "node-1" },
          status: { state: flame.ExecutorState.ExecutorBound, sessionId: "s-1" },
        }),
      ]),
    );
    assert.deepEqual(executors, [
      ["ID", "State", "Session", "Node"],
      ["node-1-0", "Bound", "s-1", "node-1"],
    ]);
    const nodes = cells(
      nodeTable([
        create(flame.NodeSchema, {
          metadata: { name: "node-1" },
          spec: { hostname: "box" },
          status: {
            state: flame.NodeState.Ready,
            capacity: { cpu: 4n, memory: 8n * GiB, gpu: 0 },
            info: { arch: "x64", os: "linux" },
          },
        }),
      ]),
    );
    assert.deepEqual(nodes, [
      ["Name", "Hostname", "Status", "CPU", "Memory", "Arch", "OS"],
      ["node-1", "box", "Ready", "4", "8Gi", "x64", "linux"],
    ]);
  });
});

describe("payloads and events", () => {
  it("shows memory in binary units, exact when possible", () => {
    assert.equal(formatMemory(8n * GiB), "8Gi");
    assert.equal(formatMemory(25_275_805_696), "23.5Gi");
    assert.equal(formatMemory(1536), "1.5Ki");
    assert.equal(formatMemory(100), "100");
  });

  it("shows printable UTF-8 as text and anything else as a byte count", () => {
    assert.equal(formatPayload(new TextEncoder().encode("done on héllo\n")), "done on héllo\n");
    assert.equal(formatPayload(new Uint8Array([0xff, 0xfe, 0x00])), "<3 bytes>");
    assert.equal(formatPayload(new TextEncoder().encode("a\u0000b")), "<3 bytes>");
    assert.equal(formatPayload(undefined), "");
  });

  it("formats events as HH:MM:SS.mmm: message (code)", () => {
    const at = new Date(2024, 0, 2, 3, 4, 5, 67).getTime();
    assert.equal(
      formatEvent({ code: 2, message: "succeeded", creationTime: BigInt(at) }),
      "03:04:05.067: succeeded (2)",
    );
    // A server that sends no message (Flame, an older Kiln) still gets a readable line.
    assert.equal(formatEvent({ code: 0, creationTime: BigInt(at) }), "03:04:05.067: pending (0)");
    assert.equal(
      formatEvent({ code: 1020, message: "", creationTime: BigInt(at) }),
      "03:04:05.067: a service process exited; its executor restarts it (1020)",
    );
  });
});

describe("ping summary", () => {
  it("computes nearest-rank percentiles", () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted
    assert.equal(percentile(values, 50), 50);
    assert.equal(percentile(values, 99), 99);
    assert.equal(percentile(values, 100), 100);
    assert.equal(percentile([7], 99), 7);
    assert.equal(percentile([], 50), 0);
  });

  it("summarizes counts, throughput and latency; cancelled tasks count apart and not in throughput", () => {
    const s = summarize("s-1", 5, { succeeded: 3, failed: 1, cancelled: 1 }, 2000, [10, 20, 30, 40]);
    assert.deepEqual(s, {
      session: "s-1",
      tasks: 5,
      succeeded: 3,
      failed: 1,
      cancelled: 1,
      durationMs: 2000,
      tasksPerSecond: 2,
      latencyMs: { p50: 20, p99: 40 },
    });
    const text = pingSummaryText(s);
    assert.match(text, /^Duration:\s+2\.00 s$/m);
    assert.match(text, /^Succeeded:\s+3\/5$/m);
    assert.match(text, /^Failed:\s+1$/m);
    assert.match(text, /^Cancelled:\s+1$/m);
    assert.match(text, /^Throughput:\s+2\.00 tasks\/s$/m);
    assert.match(text, /^Latency:\s+p50 20 ms, p99 40 ms$/m);
  });
});
