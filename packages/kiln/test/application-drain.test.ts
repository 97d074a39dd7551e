import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ERROR_CODE_HEADER, FailedPreconditionError } from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";
import { ObjectCache } from "@kiln/sdk";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import { describe, it } from "node:test";
import { untilChanged } from "../../../test/support/until.js";
import { startCacheServer } from "../src/cache/server.js";
import { ApplicationRegistry, isDraining } from "../src/control/applications.js";
import { GroupCommit } from "../src/control/store/group-commit.js";
import { SqliteStore } from "../src/control/store/sqlite-store.js";
import { closedPort } from "./cli-helpers.js";
import { appSpec, startTestControlPlane, tempDir } from "./support/control-plane.js";

/** A registry over a real store, with the set of apps that have open sessions in the test's hands. */
async function registryAt(file: string, open: Set<string>) {
  const store = SqliteStore.open(file);
  const commit = new GroupCommit(store, (refusal) => {
    throw refusal;
  });
  const apps = new ApplicationRegistry(commit, (name) => open.has(name));
  const removed: string[] = [];
  apps.onRemoved = (name) => removed.push(name);
  apps.load((await store.loadWorkingSet(1)).applications);
  return {
    apps,
    removed,
    async close() {
      await commit.settle();
      await store.close();
    },
  };
}

describe("application drain: the registry's state", async () => {
  it("removes an idle application at once, and drains one with open sessions until settle finds none", async () => {
    const open = new Set(["busy"]);
    const r = await registryAt(path.join(tempDir("drain-unit"), "kiln.db"), open);
    r.apps.register("idle", appSpec());
    r.apps.register("busy", appSpec());
    assert.equal(r.apps.unregister("idle"), "removed");
    assert.equal(r.apps.get("idle"), undefined);
    assert.equal(r.apps.unregister("busy"), "draining");
    assert.equal(r.apps.unregister("busy"), "draining", "unregistering again changes nothing");
    assert.ok(isDraining(r.apps.require("busy")));
    assert.throws(
      () => r.apps.requireAcceptingSessions("busy"),
      (e: unknown) => e instanceof FailedPreconditionError && /"busy" is being unregistered/.test(e.message),
    );
    r.apps.settle("busy");
    assert.ok(r.apps.get("busy"), "still has an open session");
    open.delete("busy");
    r.apps.settle("busy");
    assert.equal(r.apps.get("busy"), undefined);
    assert.deepEqual(r.removed, ["idle", "busy"]);
    await r.close();
  });

  it("registering or updating a draining application ends the drain", async () => {
    const r = await registryAt(path.join(tempDir("drain-unit"), "kiln.db"), new Set(["a", "b"]));
    r.apps.register("a", appSpec());
    r.apps.register("b", appSpec());
    r.apps.unregister("a");
    r.apps.unregister("b");
    r.apps.register("a", appSpec({ command: "/bin/true" }));
    r.apps.update("b", appSpec({ command: "/bin/false" }));
    for (const name of ["a", "b"]) {
      assert.equal(r.apps.require(name).state, flame.ApplicationState.Enabled, name);
      r.apps.settle(name);
      assert.ok(r.apps.get(name), `${name} is no longer draining`);
    }
    assert.deepEqual(r.removed, []);
    await r.close();
  });

  it("keeps draining across a restart, and settleAll removes a drained one", async () => {
    const file = path.join(tempDir("drain-unit"), "kiln.db");
    const open = new Set(["busy", "still"]);
    const first = await registryAt(file, open);
    first.apps.register("busy", appSpec());
    first.apps.register("still", appSpec());
    first.apps.unregister("busy");
    first.apps.unregister("still");
    await first.close();

    open.delete("busy");
    const second = await registryAt(file, open);
    assert.ok(isDraining(second.apps.require("busy")) && isDraining(second.apps.require("still")));
    second.apps.settleAll();
    assert.equal(second.apps.get("busy"), undefined);
    assert.ok(isDraining(second.apps.require("still")));
    assert.deepEqual(second.removed, ["busy"]);
    await second.close();
  });
});

async function rejectsPrecondition(p: Promise<unknown>, text: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ConnectError, String(err));
    assert.equal(err.metadata.get(ERROR_CODE_HEADER), "FAILED_PRECONDITION");
    assert.ok(err.rawMessage.includes(text), `"${err.rawMessage}" should mention "${text}"`);
    return true;
  });
}

const sessionOf = (application: string) => create(flame.SessionSpecSchema, { application });

describe("application drain: a real control plane", () => {
  it("refuses new sessions of a draining application and removes it when its last session closes", async () => {
    const t = await startTestControlPlane();
    try {
      await t.frontend.registerApplication({ name: "busy", application: appSpec() });
      await t.frontend.createSession({ sessionId: "busy-1", session: sessionOf("busy") });
      await t.frontend.createSession({ sessionId: "busy-2", session: sessionOf("busy") });
      assert.equal((await t.frontend.unregisterApplication({ name: "busy" })).returnCode, 0);
      const app = await t.frontend.getApplication({ name: "busy" });
      assert.equal(app.status?.state, flame.ApplicationState.Disabled);
      await rejectsPrecondition(
        t.frontend.createSession({ sessionId: "busy-3", session: sessionOf("busy") }),
        'application "busy" is being unregistered',
      );
      await rejectsPrecondition(
        t.frontend.openSession({ sessionId: "busy-3", session: sessionOf("busy") }),
        'application "busy" is being unregistered',
      );
      // An open session goes on: it still opens and takes tasks.
      await t.frontend.openSession({ sessionId: "busy-1", session: sessionOf("busy") });
      await t.frontend.createTask({ task: { sessionId: "busy-1", input: new Uint8Array([1]) } });

      await t.frontend.closeSession({ sessionId: "busy-1" });
      assert.ok(await t.frontend.getApplication({ name: "busy" }), "one session is still open");
      await t.frontend.closeSession({ sessionId: "busy-2" });
      await assert.rejects(t.frontend.getApplication({ name: "busy" }), (e: unknown) => {
        return e instanceof ConnectError && e.code === Code.NotFound;
      });
    } finally {
      await t.close();
    }
  });

  it("keeps draining across a restart", async () => {
    const dataDir = tempDir("drain-restart");
    let t = await startTestControlPlane({ dataDir });
    await t.frontend.registerApplication({ name: "long", application: appSpec() });
    await t.frontend.createSession({ sessionId: "long-1", session: sessionOf("long") });
    await t.frontend.unregisterApplication({ name: "long" });
    await t.close();

    t = await startTestControlPlane({ dataDir });
    try {
      assert.equal((await t.frontend.getApplication({ name: "long" })).status?.state, flame.ApplicationState.Disabled);
      await rejectsPrecondition(
        t.frontend.createSession({ sessionId: "long-2", session: sessionOf("long") }),
        "is being unregistered",
      );
      await t.frontend.closeSession({ sessionId: "long-1" });
      await assert.rejects(t.frontend.getApplication({ name: "long" }), (e: unknown) => {
        return e instanceof ConnectError && e.code === Code.NotFound;
      });
    } finally {
      await t.close();
    }
  });
});

/**
 * Passes every request to the real cache and records what the control plane asked of it, so the test
 * waits for the request it expects instead of polling the cache.
 */
async function startRecordingRelay(target: string) {
  const seen: string[] = [];
  const changes = new EventEmitter();
  const server = http.createServer((req, res) => {
    void (async () => {
      const answer = await fetch(`${target}${req.url}`, {
        method: req.method!,
        headers: req.headers.authorization ? { authorization: req.headers.authorization } : {},
      });
      const body = Buffer.from(await answer.arrayBuffer());
      res.writeHead(answer.status, { "content-type": answer.headers.get("content-type") ?? "text/plain" }).end(body);
      seen.push(`${req.method} ${req.url} ${answer.status} ${body.toString()}`);
      changes.emit("change");
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const until = (line: string) =>
    untilChanged(
      changes,
      () => seen.find((s) => s.startsWith(line)),
      15_000,
      () => `${line} (saw ${seen.join("; ")})`,
    );
  return { endpoint, until, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

describe("application drain: objects go with what owns them", () => {
  it("deletes a deleted session's objects and a removed application's, in a cache with a token", async () => {
    const token = "drain-t0ken";
    const cache = await startCacheServer({ port: 0, storage: { kind: "fs", dir: tempDir("drain-cache") }, token });
    const relay = await startRecordingRelay(cache.endpoint);
    const t = await startTestControlPlane({ token, cacheEndpoint: relay.endpoint }, token);
    const objects = new ObjectCache({ endpoint: cache.endpoint, token });
    try {
      await t.frontend.registerApplication({ name: "owner", application: appSpec() });
      await t.frontend.registerApplication({ name: "bystander", application: appSpec() });
      for (const id of ["owner-1", "owner-2"])
        await t.frontend.createSession({ sessionId: id, session: sessionOf("owner") });
      await objects.putObject("owner/owner-1/a", 1);
      await objects.putObject("owner/owner-2/b", 2);
      await objects.putObject("owner/shared/z", 3);
      await objects.putObject("bystander/x/c", 4);

      await t.frontend.closeSession({ sessionId: "owner-1" });
      await t.frontend.deleteSession({ sessionId: "owner-1" });
      assert.match(await relay.until("DELETE /v1/objects/owner/owner-1 "), / 200 \{"deleted":1\}$/);
      assert.deepEqual((await objects.listObjects("owner")).map((o) => o.key).sort(), [
        "owner/owner-2/b",
        "owner/shared/z",
      ]);

      // Draining: the objects stay while a session is open, and go when the application is removed.
      await t.frontend.unregisterApplication({ name: "owner" });
      assert.equal((await objects.listObjects("owner")).length, 2);
      await t.frontend.closeSession({ sessionId: "owner-2" });
      assert.match(await relay.until("DELETE /v1/objects/owner/* "), / 200 \{"deleted":2\}$/);
      assert.deepEqual(await objects.listObjects("owner"), []);
      assert.equal((await objects.listObjects("bystander")).length, 1, "other applications' objects stay");
    } finally {
      objects.close();
      await t.close();
      await relay.close();
      await cache.close();
    }
  });

  it("logs a cache it cannot reach and goes on", async () => {
    const lines: string[] = [];
    const logged = new EventEmitter();
    const log = (line: string) => {
      lines.push(line);
      logged.emit("change");
    };
    const t = await startTestControlPlane({ cacheEndpoint: `http://127.0.0.1:${await closedPort()}`, log });
    try {
      await t.frontend.registerApplication({ name: "lost", application: appSpec() });
      await t.frontend.createSession({ sessionId: "lost-1", session: sessionOf("lost") });
      await t.frontend.deleteSession({ sessionId: "lost-1" });
      const line = await untilChanged(logged, () => lines.find((l) => l.includes("lost-1")), 15_000, "the log line");
      assert.match(
        line,
        /could not tell the object cache at .* to delete the objects of deleted session lost-1 .*: lost\/lost-1\/\* is left in the cache/,
      );
      await t.frontend.unregisterApplication({ name: "lost" });
      await assert.rejects(
        t.frontend.getApplication({ name: "lost" }),
        (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
      );
      await untilChanged(
        logged,
        () => lines.find((l) => l.includes("unregistered application lost ")),
        15_000,
        "the log line",
      );
    } finally {
      await t.close();
    }
  });
});
