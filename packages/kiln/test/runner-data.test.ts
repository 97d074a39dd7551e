import { encodeValue, ErrorCode, ObjectRef } from "@kiln/protocol";
import { getData, GetDataError, ObjectCache, type InputData, type OutputData } from "@kiln/sdk";
import { encodeCall, encodeOutput, encodeServiceSpec, RUNNER_FORMAT, type OutputRecord } from "@kiln/protocol/runner";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import { after, before, describe, it } from "node:test";
import { startCacheServer } from "../src/cache/server.js";
import { runCli } from "./cli-helpers.js";
import { startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";

type CacheServer = Awaited<ReturnType<typeof startCacheServer>>;

const call = (args: unknown[], method: string | null = null) =>
  encodeCall({ format: RUNNER_FORMAT, type: "input", service: "src/pi.ts#estimate", method, args });

const output = (fields: Partial<OutputRecord>) =>
  encodeOutput({
    format: RUNNER_FORMAT,
    type: "output",
    stdout: "",
    stderr: "",
    stdoutTruncated: 0,
    stderrTruncated: 0,
    durationMs: 3,
    host: "node-a",
    pid: 42,
    ...fields,
  });

describe("getData", () => {
  let server: CacheServer;
  let cache: ObjectCache;
  let foreign: http.Server;
  let foreignRequests = 0;

  before(async () => {
    server = await startCacheServer({
      port: 0,
      storage: { kind: "memory", maxBytes: 64 << 20, spillDir: tempDir("data") },
    });
    cache = new ObjectCache({ endpoint: server.endpoint });
    foreign = http.createServer((_req, res) => {
      foreignRequests++;
      res.end();
    });
    await new Promise<void>((resolve) => foreign.listen(0, "127.0.0.1", resolve));
  });

  after(async () => {
    cache.close();
    await server.close();
    await new Promise((resolve) => foreign.close(resolve));
  });

  it("decodes an input, fetching ObjectRef arguments and the refs inside them", async () => {
    const inner = await cache.putObject("app/s1", { rows: [1, 2, 3] });
    const outer = await cache.putObject("app/s1", new Map<string, unknown>([["inner", inner]]));
    const data = (await getData(call([outer, 7n, new Set([inner])], "add"), { cache })) as InputData;
    assert.equal(data.type, "input");
    assert.equal(data.method, "add");
    assert.equal(data.service, "src/pi.ts#estimate");
    assert.deepEqual(data.args, [new Map([["inner", { rows: [1, 2, 3] }]]), 7n, new Set([{ rows: [1, 2, 3] }])]);
    assert.equal(data.metadata.format, RUNNER_FORMAT);
  });

  it("stops fetching at maxDepth and leaves deeper refs as refs", async () => {
    const level2 = await cache.putObject("app/s1", "bottom");
    const level1 = await cache.putObject("app/s1", { next: level2 });
    const data = (await getData(call([level1]), { cache, maxDepth: 1 })) as InputData;
    const first = data.args[0] as { next: unknown };
    assert.ok(first.next instanceof ObjectRef, "the second level stays a ref");
    const none = (await getData(call([level1]), { cache, maxDepth: 0 })) as InputData;
    assert.ok(none.args[0] instanceof ObjectRef);
  });

  it("survives cycles and shared objects in the decoded value", async () => {
    const ref = await cache.putObject("app/s1", 1);
    const node: Record<string, unknown> = { ref };
    node.self = node;
    const data = (await getData(call([node, node]), { cache })) as InputData;
    const first = data.args[0] as Record<string, unknown>;
    assert.equal(first.ref, 1);
    assert.equal(first.self, first);
    assert.equal(data.args[1], first);
  });

  it("decodes an output: inline result, stored result, error, captured output", async () => {
    const inline = (await getData(output({ result: [1, "two"], stdout: "hi\n", stderrTruncated: 10 }), {
      cache,
    })) as OutputData;
    assert.deepEqual(inline.result, [1, "two"]);
    assert.equal(inline.metadata.stdout, "hi\n");
    assert.equal(inline.metadata.stderrTruncated, 10);
    assert.equal(inline.metadata.stored, false);

    const big = await cache.putObject("app/s1", "x".repeat(100_000));
    const stored = (await getData(output({ resultRef: big }), { cache })) as OutputData;
    assert.equal(stored.result, "x".repeat(100_000));
    assert.equal(stored.metadata.stored, true);

    const err = new RangeError("n must be positive");
    const failed = (await getData(output({ type: "error", error: err }), { cache })) as OutputData;
    assert.equal(failed.result, undefined);
    assert.ok(failed.error instanceof RangeError);
    assert.equal(failed.error.message, "n must be positive");
    assert.equal(failed.error.stack, err.stack);
  });

  it("decodes a session's service spec", async () => {
    const bytes = encodeServiceSpec({
      format: RUNNER_FORMAT,
      module: "src/counter.ts",
      export: "Counter",
      kind: "class",
      args: [10],
      stateful: true,
      dependencies: ["lodash@4.17.21"],
    });
    assert.deepEqual(await getData(bytes, { cache }), {
      type: "service",
      module: "src/counter.ts",
      export: "Counter",
      kind: "class",
      args: [10],
      stateful: true,
      dependencies: ["lodash@4.17.21"],
      metadata: { format: RUNNER_FORMAT },
    });
  });

  it("refuses an ObjectRef naming a foreign endpoint, without a request", async () => {
    const address = foreign.address() as { port: number };
    const stranger = ObjectRef.from({
      endpoint: `http://127.0.0.1:${address.port}`,
      key: "app/s1/secret",
      version: 1,
      size: 3,
      sha256: "0".repeat(64),
    });
    const err = await getData(call([stranger]), { cache }).then(
      () => assert.fail("a foreign ref was followed"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof GetDataError);
    assert.equal(err.kind, "cache");
    assert.equal(err.code, ErrorCode.InvalidArgument);
    assert.match(err.message, /endpoint/);
    assert.equal(foreignRequests, 0);
  });

  it("reports a deleted object as a cache error with NOT_FOUND", async () => {
    const ref = await cache.putObject("app/s2", "gone soon");
    await cache.deleteObjects("app/s2");
    const err = await getData(call([ref]), { cache }).catch((e: unknown) => e);
    assert.ok(err instanceof GetDataError);
    assert.equal(err.kind, "cache");
    assert.equal(err.code, ErrorCode.NotFound);
  });

  it("gives a decode or format GetDataError for hostile bytes, never anything else", async () => {
    const cases: [Uint8Array, GetDataError["kind"]][] = [
      [new Uint8Array(0), "decode"],
      [Uint8Array.of(99, 1, 2, 3), "decode"],
      [encodeValue("just a string"), "format"],
      [encodeValue({ format: "kiln-run/999", type: "input" }), "format"],
      [encodeValue({ format: RUNNER_FORMAT, type: "input", service: "x", method: 5, args: [] }), "format"],
      [encodeValue({ format: RUNNER_FORMAT, type: "output" }), "format"],
      [encodeValue({ format: RUNNER_FORMAT, type: "shell", command: "rm -rf /" }), "format"],
      [call([1]).subarray(0, 10), "decode"],
    ];
    for (const [bytes, kind] of cases) {
      const err = await getData(bytes, { cache }).catch((e: unknown) => e);
      assert.ok(err instanceof GetDataError, `${Buffer.from(bytes).toString("hex")}: ${String(err)}`);
      assert.equal(err.kind, kind, err.message);
      assert.equal(err.code, ErrorCode.InvalidArgument);
    }
    // Random mutations of a valid record: each decodes or fails with a GetDataError.
    const valid = call([{ a: [1, 2, 3], b: "text", c: new Map([[1, new Date(0)]]) }]);
    for (let i = 0; i < 2000; i++) {
      const bytes = Buffer.from(valid);
      const flips = 1 + (i % 4);
      for (let f = 0; f < flips; f++) bytes[randomBytes(2).readUInt16BE() % bytes.length] = randomBytes(1)[0]!;
      await getData(bytes, { cache, maxDepth: 0 }).catch((e: unknown) => {
        assert.ok(e instanceof GetDataError, `mutation ${i} threw ${String(e)}`);
      });
    }
  });
});

describe("kiln data", () => {
  let cp: TestControlPlane;
  let server: CacheServer;

  before(async () => {
    cp = await startTestControlPlane();
    server = await startCacheServer({
      port: 0,
      storage: { kind: "memory", maxBytes: 16 << 20, spillDir: tempDir("data") },
    });
  });

  after(async () => {
    await server.close();
    await cp.close();
  });

  const kilnData = (args: string[]) =>
    runCli(["data", ...args, "--endpoint", cp.cp.endpoint, "--cache-endpoint", server.endpoint]);

  it("shows a session's service and each task's call, and one task in full", async () => {
    const cache = new ObjectCache({ endpoint: server.endpoint });
    const shared = await cache.putObject("kiln-ping/shared", { weights: [0.5, 0.25] });
    cache.close();
    const commonData = encodeServiceSpec({
      format: RUNNER_FORMAT,
      module: "src/model.ts",
      export: "Model",
      kind: "class",
      args: ["small"],
      stateful: false,
      dependencies: [],
    });
    await cp.frontend.createSession({ sessionId: "data-1", session: { application: "kiln-ping", commonData } });
    await cp.frontend.createTask({ task: { sessionId: "data-1", input: call([shared, 3], "predict") } });
    await cp.frontend.createTask({ task: { sessionId: "data-1", input: new TextEncoder().encode("not kiln") } });

    const list = await kilnData(["data-1"]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /Service src\/model\.ts#Model\('small'\) \[class\]/);
    assert.match(list.stdout, /1 +Pending +predict\(\{ weights: \[ 0\.5, 0\.25 \] \}, 3\) → -/);
    assert.match(list.stdout, /2 +Pending +\(decode error: .*\) → -/);

    const one = await kilnData(["data-1", "1"]);
    assert.equal(one.code, 0, one.stderr);
    assert.match(one.stdout, /Task data-1\/1 \(Pending\)/);
    assert.match(one.stdout, /Method +predict/);
    assert.match(one.stdout, /args\[0\] =\n +\{ weights: \[ 0\.5, 0\.25 \] \}/);

    const json = await kilnData(["data-1", "1", "-o", "json"]);
    assert.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as { input: { args: unknown[] } };
    assert.deepEqual(parsed.input.args, [{ weights: [0.5, 0.25] }, 3]);
  });

  it("says a session that is not a Runner session is not one, and what to use instead (exit 2)", async () => {
    await cp.frontend.createSession({ sessionId: "ping-1", session: { application: "kiln-ping" } });
    await cp.frontend.createTask({ task: { sessionId: "ping-1", input: new TextEncoder().encode("{}") } });
    const hint = "kiln data shows the calls of Runner sessions; see this one's tasks with kiln view -s ping-1\n";
    for (const args of [["ping-1"], ["ping-1", "1"], ["ping-1", "1", "-o", "json"]]) {
      const r = await kilnData(args);
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stdout, "");
      assert.equal(
        r.stderr,
        "error: session ping-1 (application kiln-ping) is not a Runner session: it has no common data, " +
          `where a Runner session names its service. ${hint}`,
      );
    }
    // Common data that is not a Runner service (kiln ping -c gives such bytes).
    const commonData = new Uint8Array(16).fill(0x6b);
    await cp.frontend.createSession({ sessionId: "ping-2", session: { application: "kiln-ping", commonData } });
    const bytes = await kilnData(["ping-2"]);
    assert.equal(bytes.code, 2, bytes.stderr);
    assert.match(
      bytes.stderr,
      /^error: session ping-2 \(application kiln-ping\) is not a Runner session: its common data is not a Runner service \(decode error: /,
    );
  });

  it("exits 1 with NOT_FOUND for a missing task and 3 for an unreachable cluster", async () => {
    const missing = await kilnData(["data-1", "99"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /NOT_FOUND/);
    const down = await runCli(["data", "data-1", "--endpoint", "http://127.0.0.1:1"]);
    assert.equal(down.code, 3);
    // The cluster is what could not be reached, not the object cache kiln data also uses.
    assert.match(down.stderr, /^error: cannot reach the Kiln cluster at http:\/\/127\.0\.0\.1:1\b.* --endpoint\./);
  });
});
