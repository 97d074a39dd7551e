/**
 * `--store`: what is refused at start, with the reason, before anything is opened or created.
 */
import { ErrorCode, InvalidArgumentError, KilnError } from "@kiln/protocol";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import pg from "pg";
import { resolveConfig } from "../src/control/config.js";
import { runCli } from "./cli-helpers.js";
import { appSpec, startTestControlPlane, tempDir } from "./support/control-plane.js";
import { holdPorts } from "./support/processes.js";
import { storeBackends, stopStoreBackends } from "./support/store-backends.js";

const refused = (store: string, rule: RegExp) =>
  assert.throws(
    () => resolveConfig({ dataDir: "/unused", store }),
    (err: unknown) => err instanceof InvalidArgumentError && err.field === "store" && rule.test(err.message),
  );

describe("--store", () => {
  it("takes postgres:// and postgresql:// URLs", () => {
    assert.equal(
      resolveConfig({ dataDir: "/d", store: "postgres://kiln@db:5433/kiln" }).store,
      "postgres://kiln@db:5433/kiln",
    );
    assert.equal(resolveConfig({ dataDir: "/d", store: "postgresql://db/kiln" }).store, "postgresql://db/kiln");
    assert.equal(resolveConfig({ dataDir: "/d" }).store, undefined);
  });

  it("refuses what is not a PostgreSQL URL with a database, naming --store and the rule", () => {
    const rule = /\(--store\) .*must be a PostgreSQL URL, postgres:\/\/USER\[:PASSWORD\]@HOST\[:PORT\]\/DATABASE/;
    refused("nonsense", rule);
    refused("mysql://db/kiln", rule);
    refused("/var/lib/kiln/kiln.db", rule);
    refused("postgres://db", /names no database/);
    refused("postgres://db/", /names no database/);
    refused("postgres://db:99999/kiln", rule);
  });

  it("never repeats a password it was given", () => {
    assert.throws(
      () => resolveConfig({ dataDir: "/unused", store: "postgres://kiln:hunter2@db" }),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        /"postgres:\/\/kiln:\*\*\*@db" \(--store\) names no database/.test(err.message) &&
        !err.message.includes("hunter2"),
    );
  });

  it("kiln server --store nonsense exits at once with the rule, and creates no data dir", async () => {
    const dataDir = path.join(tempDir("bad-store"), "data");
    const r = await runCli(["server", "--data-dir", dataDir, "--port", "0", "--store", "nonsense"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /store: "nonsense" \(--store\) must be a PostgreSQL URL/);
    assert.doesNotMatch(r.stdout + r.stderr, /listening/);
    assert.equal(fs.existsSync(dataDir), false, "nothing was created");
  });

  it("KILN_STORE stands for --store", async () => {
    const r = await runCli(["server", "--data-dir", tempDir("env-store"), "--port", "0"], 30_000, {
      KILN_STORE: "nonsense",
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /store: "nonsense" \(--store\) must be a PostgreSQL URL/);
  });

  it("kiln server on a database nobody listens for says it could not reach host:port, within seconds", async () => {
    const ports = await holdPorts(1);
    await ports.free(ports.first);
    const started = Date.now();
    const r = await runCli([
      "server",
      "--data-dir",
      tempDir("unreachable"),
      "--port",
      "0",
      "--store",
      `postgres://kiln:hunter2@127.0.0.1:${ports.first}/kiln`,
    ]);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      new RegExp(`could not reach PostgreSQL at 127\\.0\\.0\\.1:${ports.first} \\(database kiln\\)`),
    );
    assert.doesNotMatch(r.stdout + r.stderr, /hunter2|listening/);
    assert.ok(Date.now() - started < 20_000, "refused within the connect timeout");
  });

  for (const backend of storeBackends().filter((b) => b.name === "postgres"))
    describe("on a PostgreSQL database", { skip: backend.skip }, () => {
      after(() => stopStoreBackends());

      it("kiln server refuses a database whose schema is newer than this Kiln knows, and leaves it as it was", async () => {
        const { store } = await backend.fresh();
        const db = new pg.Client({ connectionString: store });
        await db.connect();
        try {
          await db.query("CREATE TABLE kiln_schema (version integer NOT NULL); INSERT INTO kiln_schema VALUES (99)");
          const r = await runCli(["server", "--data-dir", tempDir("newer"), "--port", "0", "--store", store!]);
          assert.notEqual(r.code, 0);
          assert.match(r.stderr, /the store's schema is version 99, newer than this Kiln knows \(\d+\)/);
          assert.doesNotMatch(r.stdout, /listening/);
          const tables = await db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'");
          assert.deepEqual(
            tables.rows.map((t: { tablename: string }) => t.tablename),
            ["kiln_schema"],
            "no table was created",
          );
        } finally {
          await db.end();
        }
      });

      it("a control plane whose connection to the database is cut stops, saying so, and refuses the write", async () => {
        const { store } = await backend.fresh();
        const t = await startTestControlPlane({ store });
        const db = new pg.Client({ connectionString: store });
        await db.connect();
        try {
          await t.frontend.registerApplication({ name: "before", application: appSpec({}) });
          // The writer's connection is the one holding the owner lock.
          const killed = await db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()",
          );
          assert.equal(killed.rowCount, 1);
          await assert.rejects(
            t.frontend.registerApplication({ name: "after", application: appSpec({}) }),
            /could not write its store \(lost the connection to postgres 127\.0\.0\.1:\d+\/kiln_test_\d+/,
          );
          const refusal = await t.cp.failed;
          assert.ok(refusal instanceof KilnError && refusal.code === ErrorCode.Internal);
          assert.match(refusal.message, /lost the connection to postgres .*the control plane stops/);
        } finally {
          await db.end();
          await t.close();
        }
        // What was acknowledged is in the database; what was refused is not.
        const again = await startTestControlPlane({ store });
        try {
          const names = (await again.frontend.listApplication({})).applications.map((a) => a.metadata?.name);
          assert.ok(names.includes("before") && !names.includes("after"), String(names));
        } finally {
          await again.close();
        }
      });
    });
});
