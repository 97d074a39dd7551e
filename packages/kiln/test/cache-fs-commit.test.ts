import { ErrorCode, KilnError } from "@kiln/protocol";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import type { ObjectStat } from "../src/cache/storage/backend.js";
import { receiveBody } from "../src/cache/storage/body-sink.js";
import { FsCatalog } from "../src/cache/storage/fs-backend.js";
import { tempDir } from "./support/control-plane.js";

function catalog(): FsCatalog {
  return new FsCatalog({ kind: "fs", dir: tempDir("fs-commit") });
}

function body(c: FsCatalog, text: string) {
  const bytes = Buffer.from(text);
  return receiveBody(bytes, { target: c.bodyTarget(), hash: createHash("sha256"), expectedLength: bytes.length });
}

function stat(key: string, size: number, previous: ObjectStat | undefined): ObjectStat {
  const version = (previous?.version ?? 0) + 1;
  return { key, version, size, sha256: "0".repeat(64), baseVersion: version, deltas: 0, createdAt: 1, updatedAt: 1 };
}

describe("fs backend: writes of one event-loop turn share a commit", () => {
  it("a write that throws inside the commit fails alone; the others in its turn still commit", async () => {
    const c = catalog();
    try {
      const bodies = await Promise.all(["a", "bb", "ccc", "dddd"].map((t) => body(c, t)));
      // All four join the same transaction; the third refuses halfway, after reading the row.
      const results = await Promise.allSettled([
        c.setBase("app/s/a", bodies[0]!, (p) => stat("app/s/a", 1, p)),
        c.setBase("app/s/b", bodies[1]!, (p) => stat("app/s/b", 2, p)),
        c.setBase("app/s/c", bodies[2]!, () => {
          throw new Error("precondition failed");
        }),
        c.setBase("app/s/d", bodies[3]!, (p) => stat("app/s/d", 4, p)),
      ]);
      assert.deepEqual(
        results.map((r) => r.status),
        ["fulfilled", "fulfilled", "rejected", "fulfilled"],
      );
      assert.match(String((results[2] as PromiseRejectedResult).reason), /precondition failed/);
      assert.deepEqual(
        c.list("app/", undefined, 10).map((s) => [s.key, s.version, s.size]),
        [
          ["app/s/a", 1, 1],
          ["app/s/b", 1, 2],
          ["app/s/d", 1, 4],
        ],
      );
    } finally {
      await c.close();
    }
  });

  it("a write still on its way when the catalog closes is refused, not run on a closed database", async () => {
    const c = catalog();
    const early = await body(c, "x");
    // setBase awaits the body's placement before it commits: close() runs in between.
    const write = c.setBase("app/s/late", early, (p) => stat("app/s/late", 1, p));
    await c.close();
    await assert.rejects(write, (e: unknown) => {
      assert.ok(e instanceof KilnError && e.code === ErrorCode.Unavailable, String(e));
      assert.match(e.message, /shutting down/);
      return true;
    });
  });

  it("a turn whose writes all succeed commits each exactly once", async () => {
    const c = catalog();
    try {
      const bodies = await Promise.all(["x", "y"].map((t) => body(c, t)));
      let decisions = 0;
      const decide = (key: string) => (p: ObjectStat | undefined) => (decisions++, stat(key, 1, p));
      await Promise.all([
        c.setBase("app/s/x", bodies[0]!, decide("app/s/x")),
        c.setBase("app/s/y", bodies[1]!, decide("app/s/y")),
      ]);
      assert.equal(decisions, 2);
      assert.deepEqual(
        c.list("app/", undefined, 10).map((s) => s.version),
        [1, 1],
      );
    } finally {
      await c.close();
    }
  });
});
