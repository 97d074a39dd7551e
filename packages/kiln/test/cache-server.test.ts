import {
  BATCH_CONTENT_TYPE,
  decodeBatchResponse,
  decodeParts,
  encodeBatchRequest,
  SEND_ALONE,
  type SubRequest,
} from "@kiln/protocol/cache";
import { ERROR_CODE_HEADER, encodeValue } from "@kiln/protocol";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { startCacheServer, type CacheServer, type CacheServerOptions } from "../src/cache/server.js";
import { untilChanged, untilDirChanges } from "../../../test/support/until.js";
import { request, sha256, type RawResponse } from "./support/cache-http.js";

interface TestCache {
  cache: CacheServer;
  dir: string;
  req(method: string, urlPath: string, options?: Parameters<typeof request>[3]): Promise<RawResponse>;
  close(): Promise<void>;
}

const tempDirs: string[] = [];
after(() => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-cache-test-"));
  tempDirs.push(d);
  return d;
}

async function startTestCache(options: Partial<CacheServerOptions> = {}, dir = tempDir()): Promise<TestCache> {
  const cache = await startCacheServer({ port: 0, storage: { kind: "fs", dir }, ...options });
  return {
    cache,
    dir,
    req: (method, urlPath, o) => request(`http://127.0.0.1:${cache.port}`, method, urlPath, o),
    close: () => cache.close(),
  };
}

function assertError(res: RawResponse, status: number, code: string, text?: string, field?: string): void {
  assert.equal(res.status, status, `status of ${res.body.toString()}`);
  assert.equal(res.headers[ERROR_CODE_HEADER], code);
  const body = res.json<{ code: string; message: string; field?: string }>();
  assert.equal(body.code, code);
  if (text) assert.ok(body.message.includes(text), `"${body.message}" should mention ${text}`);
  if (field) assert.equal(body.field, field);
}

interface Ref {
  endpoint: string;
  key: string;
  version: number;
  size: number;
  sha256: string;
}

const chain = (previous: string, delta: string | Uint8Array) => sha256(Buffer.from(previous, "hex"), delta);

describe("cache server: put, get, versions", () => {
  let t: TestCache;
  before(async () => (t = await startTestCache()));
  after(() => t.close());

  it("creates version 1 (201) and replaces with version 2 (200), returning ObjectRefs", async () => {
    const first = await t.req("PUT", "/v1/objects/app/s1/obj", { body: "hello" });
    assert.equal(first.status, 201);
    assert.deepEqual(first.json(), {
      endpoint: t.cache.endpoint,
      key: "app/s1/obj",
      version: 1,
      size: 5,
      sha256: sha256("hello"),
    });
    const second = await t.req("PUT", "/v1/objects/app/s1/obj", { body: "bye" });
    assert.equal(second.status, 200);
    assert.equal(second.json<Ref>().version, 2);

    const got = await t.req("GET", "/v1/objects/app/s1/obj");
    assert.equal(got.status, 200);
    assert.equal(got.body.toString(), "bye");
    assert.equal(got.headers["kiln-version"], "2");
    assert.equal(got.headers["kiln-sha256"], sha256("bye"));
    assert.equal(got.headers["kiln-size"], "3");
    assert.equal(got.headers["kiln-format"], "raw");
    assert.equal(got.headers.etag, '"2"');
    assert.equal(got.headers["content-type"], "application/octet-stream");
  });

  it("assigns a url-safe id when putting or posting to a prefix", async () => {
    for (const method of ["PUT", "POST"]) {
      const res = await t.req(method, "/v1/objects/app/s2", { body: `by ${method}` });
      assert.equal(res.status, 201);
      const ref = res.json<Ref>();
      assert.match(ref.key, /^app\/s2\/[0-9a-f]{24}$/);
      assert.equal((await t.req("GET", `/v1/objects/${ref.key}`)).body.toString(), `by ${method}`);
    }
  });

  it("stores an empty object and a file-backed object (> 64 KiB) byte for byte", async () => {
    const empty = await t.req("PUT", "/v1/objects/app/s1/empty", { body: "" });
    assert.equal(empty.json<Ref>().sha256, sha256(""));
    assert.equal((await t.req("GET", "/v1/objects/app/s1/empty")).body.length, 0);
    const big = Buffer.alloc(300 * 1024, 7).fill("kiln", 1000, 2000);
    const ref = (await t.req("PUT", "/v1/objects/app/s1/big", { body: big })).json<Ref>();
    assert.equal(ref.sha256, sha256(big));
    assert.ok((await t.req("GET", "/v1/objects/app/s1/big")).body.equals(big));
  });

  it("HEAD answers the headers of GET without a body; 404 when missing", async () => {
    await t.req("PUT", "/v1/objects/app/s1/head", { body: "12345" });
    const head = await t.req("HEAD", "/v1/objects/app/s1/head");
    assert.equal(head.status, 200);
    assert.equal(head.body.length, 0);
    assert.equal(head.headers["content-length"], "5");
    assert.equal(head.headers["kiln-sha256"], sha256("12345"));
    assert.equal((await t.req("HEAD", "/v1/objects/app/s1/nope")).status, 404);
  });

  it("stat returns version, size, sha, base version, deltas and timestamps", async () => {
    const before = Date.now();
    await t.req("PUT", "/v1/objects/app/st/x", { body: "base" });
    await t.req("PATCH", "/v1/objects/app/st/x", { body: "+1" });
    const stat = (await t.req("GET", "/v1/stat/app/st/x")).json<Record<string, unknown>>();
    assert.deepEqual(
      { ...stat, createdAt: 0, updatedAt: 0 },
      {
        key: "app/st/x",
        version: 2,
        size: 6,
        sha256: chain(sha256("base"), "+1"),
        baseVersion: 1,
        deltas: 1,
        createdAt: 0,
        updatedAt: 0,
      },
    );
    assert.ok((stat.createdAt as number) >= before && (stat.updatedAt as number) >= (stat.createdAt as number));
    assertError(await t.req("GET", "/v1/stat/app/st/missing"), 404, "NOT_FOUND", "app/st/missing");
  });

  it("kiln-if-version: 0 creates only, N replaces only version N; a mismatch is 409 and changes nothing", async () => {
    assert.equal(
      (await t.req("PUT", "/v1/objects/app/iv/x", { body: "a", headers: { "kiln-if-version": "0" } })).status,
      201,
    );
    assertError(
      await t.req("PUT", "/v1/objects/app/iv/x", { body: "b", headers: { "kiln-if-version": "0" } }),
      409,
      "FAILED_PRECONDITION",
      "already exists",
    );
    assertError(
      await t.req("PUT", "/v1/objects/app/iv/x", { body: "c", headers: { "kiln-if-version": "5" } }),
      409,
      "FAILED_PRECONDITION",
      "version 1, not 5",
    );
    assertError(
      await t.req("PATCH", "/v1/objects/app/iv/x", { body: "d", headers: { "kiln-if-version": "2" } }),
      409,
      "FAILED_PRECONDITION",
    );
    assert.equal((await t.req("GET", "/v1/objects/app/iv/x")).body.toString(), "a");
    const ok = await t.req("PUT", "/v1/objects/app/iv/x", { body: "e", headers: { "kiln-if-version": "1" } });
    assert.equal(ok.json<Ref>().version, 2);
    assertError(
      await t.req("PUT", "/v1/objects/app/iv/x", { body: "f", headers: { "kiln-if-version": "x1" } }),
      400,
      "INVALID_ARGUMENT",
      undefined,
      "kiln-if-version",
    );
  });

  it("verifies kiln-sha256: a mismatch is 400 and the old version stays", async () => {
    await t.req("PUT", "/v1/objects/app/sha/x", { body: "old" });
    const ok = await t.req("PUT", "/v1/objects/app/sha/x", { body: "new", headers: { "kiln-sha256": sha256("new") } });
    assert.equal(ok.status, 200);
    const big = Buffer.alloc(200 * 1024, 1);
    const bad = await t.req("PUT", "/v1/objects/app/sha/x", { body: big, headers: { "kiln-sha256": sha256("other") } });
    assertError(bad, 400, "INVALID_ARGUMENT", "sha256", "kiln-sha256");
    const small = await t.req("PUT", "/v1/objects/app/sha/x", { body: "z", headers: { "kiln-sha256": sha256("y") } });
    assertError(small, 400, "INVALID_ARGUMENT", sha256("y"), "kiln-sha256");
    const got = await t.req("GET", "/v1/objects/app/sha/x");
    assert.equal(got.body.toString(), "new");
    assert.equal(got.headers["kiln-version"], "2");
    assert.deepEqual(fs.readdirSync(path.join(t.dir, "tmp")), []);
  });

  it("answers health, unknown routes (404) and wrong methods (405)", async () => {
    assert.deepEqual((await t.req("GET", "/v1/health")).json(), {
      ok: true,
      backend: "fs",
      endpoint: t.cache.endpoint,
    });
    assertError(await t.req("GET", "/v2/nothing"), 404, "NOT_FOUND");
    const wrong = await t.req("OPTIONS", "/v1/objects/app/s/x");
    assert.equal(wrong.status, 405);
    assert.ok(String(wrong.headers.allow).includes("PATCH"));
  });

  it("advertises the configured endpoint in ObjectRefs", async () => {
    const other = await startTestCache({ advertiseEndpoint: "http://cache.example:7422" });
    try {
      const ref = (await other.req("PUT", "/v1/objects/a/b/c", { body: "x" })).json<Ref>();
      assert.equal(ref.endpoint, "http://cache.example:7422");
    } finally {
      await other.close();
    }
  });
});

describe("cache server: patches and incremental reads", () => {
  let t: TestCache;
  before(async () => (t = await startTestCache()));
  after(() => t.close());

  it("patching a missing object is 404 and creates nothing", async () => {
    assertError(await t.req("PATCH", "/v1/objects/app/p/missing", { body: "d" }), 404, "NOT_FOUND", "app/p/missing");
    assert.equal((await t.req("GET", "/v1/objects/app/p/missing")).status, 404);
  });

  it("appends deltas with chained sha256; a read returns the base and every delta as parts", async () => {
    await t.req("PUT", "/v1/objects/app/p/x", { body: "base" });
    let sha = sha256("base");
    for (const [i, delta] of ["+a", "+bb", "+ccc"].entries()) {
      const ref = (await t.req("PATCH", "/v1/objects/app/p/x", { body: delta })).json<Ref>();
      sha = chain(sha, delta);
      assert.equal(ref.version, i + 2);
      assert.equal(ref.sha256, sha);
    }
    const got = await t.req("GET", "/v1/objects/app/p/x");
    assert.equal(got.headers["kiln-format"], "parts");
    assert.equal(got.headers["content-type"], "application/vnd.kiln.parts");
    assert.equal(got.headers["kiln-size"], String(4 + 2 + 3 + 4));
    assert.equal(got.headers["kiln-sha256"], sha);
    const parts = decodeParts(got.body).map((p) => [p.version, Buffer.from(p.bytes).toString()]);
    assert.deepEqual(parts, [
      [1, "base"],
      [2, "+a"],
      [3, "+bb"],
      [4, "+ccc"],
    ]);
  });

  it("incremental reads: 304 when current, only newer deltas when older, everything otherwise", async () => {
    await t.req("PUT", "/v1/objects/app/p/inc", { body: "v1" });
    await t.req("PUT", "/v1/objects/app/p/inc", { body: "v2" });
    for (const d of ["-3", "-4", "-5"]) await t.req("PATCH", "/v1/objects/app/p/inc", { body: d });
    const read = (have: Record<string, string>) => t.req("GET", "/v1/objects/app/p/inc", { headers: have });

    const current = await read({ "kiln-have-version": "5" });
    assert.equal(current.status, 304);
    assert.equal(current.body.length, 0);
    assert.equal(current.headers["kiln-sha256"], chain(chain(chain(sha256("v2"), "-3"), "-4"), "-5"));
    assert.equal((await read({ "if-none-match": '"5"' })).status, 304);

    const fromThree = await read({ "kiln-have-version": "3" });
    assert.equal(fromThree.status, 200);
    assert.equal(fromThree.headers["kiln-delta-from"], "3");
    assert.deepEqual(
      decodeParts(fromThree.body).map((p) => [p.version, Buffer.from(p.bytes).toString()]),
      [
        [4, "-4"],
        [5, "-5"],
      ],
    );
    const fromBase = await read({ "if-none-match": '"2"' });
    assert.deepEqual(
      decodeParts(fromBase.body).map((p) => p.version),
      [3, 4, 5],
    );
    for (const have of ["1", "9"]) {
      const full = await read({ "kiln-have-version": have });
      assert.equal(full.headers["kiln-delta-from"], undefined);
      assert.deepEqual(
        decodeParts(full.body).map((p) => p.version),
        [2, 3, 4, 5],
      );
    }
    assertError(await read({ "kiln-have-version": "two" }), 400, "INVALID_ARGUMENT", undefined, "kiln-have-version");
  });

  it("a put after patches drops the deltas: raw again, version + 1", async () => {
    await t.req("PUT", "/v1/objects/app/p/re", { body: "a" });
    await t.req("PATCH", "/v1/objects/app/p/re", { body: "b" });
    const ref = (await t.req("PUT", "/v1/objects/app/p/re", { body: "c" })).json<Ref>();
    assert.equal(ref.version, 3);
    const got = await t.req("GET", "/v1/objects/app/p/re");
    assert.equal(got.headers["kiln-format"], "raw");
    assert.equal(got.body.toString(), "c");
  });

  it("PATCH kiln-sha256 is the delta's sha256; a mismatch is 400 and the object stays", async () => {
    await t.req("PUT", "/v1/objects/app/p/ds", { body: "a" });
    const ok = await t.req("PATCH", "/v1/objects/app/p/ds", { body: "b", headers: { "kiln-sha256": sha256("b") } });
    assert.equal(ok.json<Ref>().version, 2);
    const bad = await t.req("PATCH", "/v1/objects/app/p/ds", { body: "c", headers: { "kiln-sha256": sha256("x") } });
    assertError(bad, 400, "INVALID_ARGUMENT", undefined, "kiln-sha256");
    assert.equal((await t.req("GET", "/v1/stat/app/p/ds")).json<Ref>().version, 2);
  });

  for (const announced of [3, 100_000]) {
    it(`a patch (${announced} bytes) whose client goes away while it waits for the key does not block the key`, async () => {
      const urlPath = `/v1/objects/app/p/wait${announced}`;
      await t.req("PUT", urlPath, { body: "0" });
      // The first patch holds the key while its body trickles in.
      const first = rawUpload(t.cache.port, "PATCH", urlPath, 10);
      first.socket.write("12345");
      await first.answered(100);
      const second = rawUpload(t.cache.port, "PATCH", urlPath, announced);
      second.socket.write("abc");
      await second.answered(100);
      second.socket.destroy();
      // Answered after the drop, so the server has read the drop by then: the second patch went away while waiting.
      await t.req("GET", "/v1/health");
      first.socket.write("67890");
      await first.answered(200);
      first.socket.destroy();
      const third = await t.req("PATCH", urlPath, { body: "z", timeoutMs: 5_000 });
      assert.equal(third.json<Ref>().version, 3);
      assert.deepEqual(fs.readdirSync(path.join(t.dir, "tmp")), []);
    });
  }

  it("concurrent patches of one key all land, each chained on the one before", async () => {
    await t.req("PUT", "/v1/objects/app/p/conc", { body: "0" });
    const deltas = Array.from({ length: 20 }, (_, i) => `<${i}>`);
    await Promise.all(deltas.map((d) => t.req("PATCH", "/v1/objects/app/p/conc", { body: d })));
    const got = await t.req("GET", "/v1/objects/app/p/conc");
    const parts = decodeParts(got.body);
    assert.equal(parts.length, 21);
    let sha = sha256("0");
    for (const p of parts.slice(1)) sha = chain(sha, p.bytes);
    assert.equal(got.headers["kiln-sha256"], sha);
    assert.deepEqual(
      parts
        .slice(1)
        .map((p) => Buffer.from(p.bytes).toString())
        .sort(),
      [...deltas].sort(),
    );
  });
});

describe("cache server: compaction", () => {
  it("folds deltas past the threshold; reads return the same parts and versions; > 1000 patches work", async () => {
    const t = await startTestCache({ compaction: { maxDeltas: 8 } });
    try {
      await t.req("PUT", "/v1/objects/app/c/many", { body: "base" });
      const expected: [number, string][] = [[1, "base"]];
      let sha = sha256("base");
      for (let v = 2; v <= 1101; v++) {
        const delta = `d${v};`;
        const res = await t.req("PATCH", "/v1/objects/app/c/many", { body: delta });
        assert.equal(res.status, 200, res.body.toString());
        expected.push([v, delta]);
        sha = chain(sha, delta);
      }
      const got = await t.req("GET", "/v1/objects/app/c/many");
      assert.equal(got.headers["kiln-version"], "1101");
      assert.equal(got.headers["kiln-sha256"], sha);
      assert.deepEqual(
        decodeParts(got.body).map((p) => [p.version, Buffer.from(p.bytes).toString()]),
        expected,
      );
      const tail = await t.req("GET", "/v1/objects/app/c/many", { headers: { "kiln-have-version": "1097" } });
      assert.deepEqual(
        decodeParts(tail.body).map((p) => [p.version, Buffer.from(p.bytes).toString()]),
        expected.slice(1097),
      );
      assert.equal((await t.req("GET", "/v1/stat/app/c/many")).json<{ deltas: number }>().deltas, 1100);
    } finally {
      await t.close();
    }
  });

  it("folds delta files into one segment file without changing what reads return", async () => {
    const t = await startTestCache({ compaction: { maxDeltas: 3 } });
    try {
      const blobs = () => fs.readdirSync(path.join(t.dir, "blobs")).length;
      const base = Buffer.alloc(100 * 1024, "b");
      await t.req("PUT", "/v1/objects/app/c/files", { body: base });
      const deltas = [1, 2, 3].map((i) => Buffer.alloc(70 * 1024, String(i)));
      for (const d of deltas) await t.req("PATCH", "/v1/objects/app/c/files", { body: d });
      assert.equal(blobs(), 4, "base and three delta files before compaction");
      const before = await t.req("GET", "/v1/objects/app/c/files");

      const fourth = Buffer.alloc(70 * 1024, "4");
      await t.req("PATCH", "/v1/objects/app/c/files", { body: fourth });
      await untilDirChanges(
        path.join(t.dir, "blobs"),
        () => blobs() === 2,
        5_000,
        "the folded delta files to be deleted",
      );
      const after = await t.req("GET", "/v1/objects/app/c/files");
      const parts = decodeParts(after.body);
      assert.deepEqual(
        parts.map((p) => p.version),
        [1, 2, 3, 4, 5],
      );
      assert.ok(Buffer.from(parts[4]!.bytes).equals(fourth));
      assert.ok(after.body.subarray(0, before.body.length).equals(before.body), "earlier parts are unchanged");
      const incremental = await t.req("GET", "/v1/objects/app/c/files", { headers: { "kiln-have-version": "3" } });
      assert.deepEqual(
        decodeParts(incremental.body).map((p) => Buffer.from(p.bytes).equals(p.version === 4 ? deltas[2]! : fourth)),
        [true, true],
      );
    } finally {
      await t.close();
    }
  });
});

describe("cache server: range reads", () => {
  let t: TestCache;
  const small = "0123456789";
  const big = Buffer.from(Array.from({ length: 200 * 1024 }, (_, i) => i % 251));
  before(async () => {
    t = await startTestCache();
    await t.req("PUT", "/v1/objects/app/r/small", { body: small });
    await t.req("PUT", "/v1/objects/app/r/big", { body: big });
  });
  after(() => t.close());

  for (const [range, status, body, contentRange] of [
    ["bytes=2-4", 206, "234", "bytes 2-4/10"],
    ["bytes=7-", 206, "789", "bytes 7-9/10"],
    ["bytes=-3", 206, "789", "bytes 7-9/10"],
    ["bytes=5-100", 206, "56789", "bytes 5-9/10"],
    ["bytes=-100", 206, small, "bytes 0-9/10"],
    ["bytes=0-1,4-5", 200, small, undefined],
    ["items=1-2", 200, small, undefined],
  ] as const) {
    it(`${range} → ${status}`, async () => {
      const res = await t.req("GET", "/v1/objects/app/r/small", { headers: { range } });
      assert.equal(res.status, status);
      assert.equal(res.body.toString(), body);
      assert.equal(res.headers["content-range"], contentRange);
    });
  }

  it("an unsatisfiable range is 416 with content-range bytes */size", async () => {
    for (const range of ["bytes=10-", "bytes=-0"]) {
      const res = await t.req("GET", "/v1/objects/app/r/small", { headers: { range } });
      assert.equal(res.status, 416);
      assert.equal(res.headers["content-range"], "bytes */10");
    }
  });

  it("serves ranges of a file-backed object", async () => {
    const res = await t.req("GET", "/v1/objects/app/r/big", { headers: { range: "bytes=100000-150000" } });
    assert.equal(res.status, 206);
    assert.ok(res.body.equals(big.subarray(100000, 150001)));
    assert.equal(res.headers["content-range"], `bytes 100000-150000/${big.length}`);
  });
});

describe("cache server: delete and list", () => {
  let t: TestCache;
  before(async () => (t = await startTestCache()));
  after(() => t.close());

  it("deletes a key (then GET is 404, a second delete is 404)", async () => {
    await t.req("PUT", "/v1/objects/app/d/x", { body: "x" });
    assert.deepEqual((await t.req("DELETE", "/v1/objects/app/d/x")).json(), { deleted: 1 });
    assertError(await t.req("GET", "/v1/objects/app/d/x"), 404, "NOT_FOUND", "app/d/x");
    assertError(await t.req("DELETE", "/v1/objects/app/d/x"), 404, "NOT_FOUND");
  });

  it("deletes a prefix and a whole application, leaving others alone", async () => {
    for (const key of ["a1/s1/x", "a1/s1/y", "a1/s2/z", "a10/s1/x", "a2/s1/x"])
      await t.req("PUT", `/v1/objects/${key}`, { body: Buffer.alloc(key === "a1/s1/y" ? 100_000 : 5) });
    assert.deepEqual((await t.req("DELETE", "/v1/objects/a1/s1")).json(), { deleted: 2 });
    assert.equal((await t.req("GET", "/v1/objects/a1/s2/z")).status, 200);
    assert.deepEqual((await t.req("DELETE", "/v1/objects/a1/*")).json(), { deleted: 1 });
    assert.deepEqual((await t.req("DELETE", "/v1/objects/a1/*")).json(), { deleted: 0 });
    assert.deepEqual((await t.req("DELETE", "/v1/objects/empty/s")).json(), { deleted: 0 });
    for (const key of ["a1/s1/x", "a1/s1/y", "a1/s2/z"])
      assert.equal((await t.req("GET", `/v1/objects/${key}`)).status, 404);
    for (const key of ["a10/s1/x", "a2/s1/x"]) assert.equal((await t.req("GET", `/v1/objects/${key}`)).status, 200);
    assertError(await t.req("DELETE", "/v1/objects/a1/s1/*"), 400, "INVALID_ARGUMENT", "<app>/*", "prefix");
  });

  it("lists by application or session, sorted, paged with limit/after/next", async () => {
    const keys = ["l/s2/b", "l/s1/c", "l/s1/a", "l/s2/a", "l/s1/b", "lx/s1/a"];
    for (const key of keys) await t.req("PUT", `/v1/objects/${key}`, { body: key });
    const page = (query: string) =>
      t
        .req("GET", `/v1/list?${query}`)
        .then((r) => r.json<{ objects: { key: string; sha256: string }[]; next?: string }>());

    const all = await page("prefix=l");
    assert.deepEqual(
      all.objects.map((o) => o.key),
      ["l/s1/a", "l/s1/b", "l/s1/c", "l/s2/a", "l/s2/b"],
    );
    assert.equal(all.objects[0]!.sha256, sha256("l/s1/a"));
    assert.equal(all.next, undefined);
    assert.deepEqual(
      (await page("prefix=l/s2")).objects.map((o) => o.key),
      ["l/s2/a", "l/s2/b"],
    );

    const seen: string[] = [];
    let next: string | undefined;
    do {
      const p = await page(`prefix=l&limit=2${next ? `&after=${next}` : ""}`);
      assert.ok(p.objects.length <= 2);
      seen.push(...p.objects.map((o) => o.key));
      next = p.next;
    } while (next);
    assert.deepEqual(
      seen,
      all.objects.map((o) => o.key),
    );

    for (const bad of ["limit=0", "limit=10001", "limit=x"])
      assertError(await t.req("GET", `/v1/list?prefix=l&${bad}`), 400, "INVALID_ARGUMENT", undefined, "limit");
    assertError(await t.req("GET", "/v1/list"), 400, "INVALID_ARGUMENT", "must not be empty", "prefix");
    assertError(await t.req("GET", "/v1/list?prefix=l/s/x"), 400, "INVALID_ARGUMENT", "components", "prefix");
    assertError(await t.req("GET", "/v1/list?prefix=l&after=l/s1"), 400, "INVALID_ARGUMENT", undefined, "after");
  });
});

describe("cache server: fs backend survives a restart", () => {
  for (const durability of ["normal", "full"] as const) {
    it(`serves every object, version, delta and sha back after close and start on the same dir (durability ${durability})`, async () => {
      const dir = tempDir();
      const big = Buffer.alloc(512 * 1024, "z");
      const options = { storage: { kind: "fs", dir, durability } } as const;
      let t = await startTestCache(options, dir);
      await t.req("PUT", "/v1/objects/app/s/small", { body: "small" });
      await t.req("PUT", "/v1/objects/app/s/big", { body: big });
      await t.req("PUT", "/v1/objects/app/s/patched", { body: "b" });
      await t.req("PATCH", "/v1/objects/app/s/patched", { body: Buffer.alloc(100 * 1024, "p") });
      await t.req("PATCH", "/v1/objects/app/s/patched", { body: "q" });
      const before = await Promise.all(["small", "big", "patched"].map((k) => t.req("GET", `/v1/objects/app/s/${k}`)));
      await t.close();

      // Leftovers of a crash: a temp file mid-upload and a blob renamed but never committed.
      fs.writeFileSync(path.join(dir, "tmp", "partial"), "half an upload");
      fs.writeFileSync(path.join(dir, "blobs", "0123456789abcdef0123456789abcdef"), "orphan");

      t = await startTestCache(options, dir);
      try {
        assert.deepEqual(fs.readdirSync(path.join(dir, "tmp")), []);
        assert.ok(!fs.existsSync(path.join(dir, "blobs", "0123456789abcdef0123456789abcdef")));
        for (const [i, k] of ["small", "big", "patched"].entries()) {
          const got = await t.req("GET", `/v1/objects/app/s/${k}`);
          assert.ok(got.body.equals(before[i]!.body), k);
          for (const h of ["kiln-version", "kiln-sha256", "kiln-size", "kiln-format"])
            assert.equal(got.headers[h], before[i]!.headers[h], `${k} ${h}`);
        }
        assert.equal((await t.req("PATCH", "/v1/objects/app/s/patched", { body: "r" })).json<Ref>().version, 4);
      } finally {
        await t.close();
      }
    });
  }
});

describe("cache server: one server per fs directory", () => {
  it("refuses a second server on the same dir without touching the first one's uploads", async () => {
    const dir = tempDir();
    const t = await startTestCache({}, dir);
    try {
      await t.req("PUT", "/v1/objects/app/s/x", { body: "kept" });
      const inFlight = path.join(dir, "tmp", "upload-in-progress");
      fs.writeFileSync(inFlight, "partial");
      await assert.rejects(
        startCacheServer({ port: 0, storage: { kind: "fs", dir } }),
        /in use by another cache server/,
      );
      assert.ok(fs.existsSync(inFlight), "the running server's temp file is still there");
      assert.equal((await t.req("GET", "/v1/objects/app/s/x")).body.toString(), "kept");
    } finally {
      await t.close();
    }
  });
});

describe("cache server: memory backend", () => {
  it("spills least recently used objects to disk instead of dropping them", async () => {
    const spillDir = tempDir();
    const t = await startTestCache({ storage: { kind: "memory", maxBytes: 64 * 1024, spillDir } });
    try {
      const spilled = () => fs.readdirSync(path.join(spillDir, "blobs")).length;
      const bodies = Array.from({ length: 10 }, (_, i) => Buffer.alloc(20 * 1024, i));
      for (const [i, b] of bodies.entries()) await t.req("PUT", `/v1/objects/m/s/o${i}`, { body: b });
      assert.ok(spilled() >= 7, `expected most objects spilled, found ${spilled()} files`);
      const huge = Buffer.alloc(200 * 1024, "h");
      await t.req("PUT", "/v1/objects/m/s/huge", { body: huge });
      await t.req("PATCH", "/v1/objects/m/s/o0", { body: "delta" });
      for (const [i, b] of bodies.entries()) {
        const got = await t.req("GET", `/v1/objects/m/s/o${i}`);
        const bytes = i === 0 ? Buffer.from(decodeParts(got.body)[0]!.bytes) : got.body;
        assert.ok(bytes.equals(b), `o${i}`);
      }
      assert.ok((await t.req("GET", "/v1/objects/m/s/huge")).body.equals(huge));
      assert.equal((await t.req("GET", "/v1/health")).json<{ backend: string }>().backend, "memory");
      assert.deepEqual((await t.req("DELETE", "/v1/objects/m/*")).json(), { deleted: 11 });
      await untilDirChanges(path.join(spillDir, "blobs"), () => spilled() === 0, 5_000, "spill files to be removed");
    } finally {
      await t.close();
    }
  });

  it("refuses a write it cannot keep with 507 naming the limit, and changes nothing", async () => {
    const spillDir = tempDir();
    const t = await startTestCache({
      storage: { kind: "memory", maxBytes: 32 * 1024, spillDir, maxSpillBytes: 64 * 1024 },
    });
    try {
      const kept = new Map<string, Buffer>();
      for (let i = 0; i < 3; i++) {
        const body = Buffer.alloc(30 * 1024, i + 1);
        assert.equal((await t.req("PUT", `/v1/objects/m/s/k${i}`, { body })).status, 201);
        kept.set(`m/s/k${i}`, body);
      }
      // Memory holds one 30 KiB object and the spill two; the next must spill a third (over 64 KiB).
      const refused = await t.req("PUT", "/v1/objects/m/s/k0", { body: Buffer.alloc(30 * 1024, 9) });
      assertError(refused, 507, "RESOURCE_EXHAUSTED", "maxSpillBytes");
      const tooBig = await t.req("PUT", "/v1/objects/m/s/big", { body: Buffer.alloc(100 * 1024, 8) });
      assertError(tooBig, 507, "RESOURCE_EXHAUSTED", "maxSpillBytes");
      const patch = await t.req("PATCH", "/v1/objects/m/s/k1", { body: Buffer.alloc(30 * 1024, 7) });
      assertError(patch, 507, "RESOURCE_EXHAUSTED", "maxSpillBytes");

      for (const [key, body] of kept) {
        const got = await t.req("GET", `/v1/objects/${key}`);
        assert.equal(got.headers["kiln-version"], "1", key);
        assert.ok(got.body.equals(body), key);
      }
      assert.equal((await t.req("GET", "/v1/objects/m/s/big")).status, 404);
      const listed = (await t.req("GET", "/v1/list?prefix=m")).json<{ objects: unknown[] }>();
      assert.equal(listed.objects.length, 3);
      assert.deepEqual(fs.readdirSync(path.join(spillDir, "tmp")), []);
      // Deleting frees room: the refused write now fits.
      await t.req("DELETE", "/v1/objects/m/s/k2");
      assert.equal((await t.req("PUT", "/v1/objects/m/s/k0", { body: Buffer.alloc(30 * 1024, 9) })).status, 200);
    } finally {
      await t.close();
    }
  });
});

describe("cache server: batches", () => {
  let t: TestCache;
  before(async () => (t = await startTestCache()));
  after(() => t.close());

  const enc = (text: string) => new TextEncoder().encode(text);
  const batch = (items: SubRequest[], headers: Record<string, string> = {}) =>
    t.req("POST", "/v1/batch", {
      body: Buffer.from(encodeBatchRequest(items)),
      headers: { "content-type": BATCH_CONTENT_TYPE, ...headers },
    });

  it("answers each sub-request in order exactly as it would have been answered alone", async () => {
    await t.req("PUT", "/v1/objects/b/s/old", { body: "old" });
    const res = await batch([
      { method: "PUT", path: "/v1/objects/b/s/new", headers: {}, body: enc("fresh") },
      { method: "GET", path: "/v1/objects/b/s/old", headers: {} },
      { method: "GET", path: "/v1/objects/b/s/missing", headers: {} },
      { method: "PUT", path: "/v1/objects/b/s/../x", headers: {}, body: enc("no") },
      { method: "GET", path: "/v1/objects/b/s/old", headers: { "kiln-have-version": "1" } },
      { method: "DELETE", path: "/v1/objects/b/s/old", headers: {} },
    ]);
    assert.equal(res.status, 200);
    const [put, got, missing, traversal, notModified, deleted] = decodeBatchResponse(res.body, 6);
    assert.equal(put!.status, 201);
    assert.deepEqual(JSON.parse(Buffer.from(put!.body).toString()), {
      endpoint: t.cache.endpoint,
      key: "b/s/new",
      version: 1,
      size: 5,
      sha256: sha256("fresh"),
    });
    assert.equal(got!.status, 200);
    assert.equal(Buffer.from(got!.body).toString(), "old");
    assert.equal(got!.headers["kiln-sha256"], sha256("old"));
    assert.equal(missing!.status, 404);
    assert.equal(missing!.headers[ERROR_CODE_HEADER], "NOT_FOUND");
    assert.equal(traversal!.status, 400);
    assert.match(Buffer.from(traversal!.body).toString(), /"field":"key"/);
    assert.equal(notModified!.status, 304);
    assert.equal(deleted!.status, 200);
    // The batch's writes are the server's writes.
    assert.equal((await t.req("GET", "/v1/objects/b/s/new")).body.toString(), "fresh");
    assert.equal((await t.req("GET", "/v1/objects/b/s/old")).status, 404);
    assert.equal((await t.req("GET", "/v1/objects/b/s/x")).status, 404);
  });

  it("a sub-response over 1 MiB is not batched: SEND_ALONE, and the object is untouched", async () => {
    const big = Buffer.alloc(1024 * 1024 + 1, 7);
    await t.req("PUT", "/v1/objects/b/s/big", { body: big });
    const [alone, small] = decodeBatchResponse(
      (
        await batch([
          { method: "GET", path: "/v1/objects/b/s/big", headers: {} },
          { method: "GET", path: "/v1/stat/b/s/big", headers: {} },
        ])
      ).body,
      2,
    );
    assert.equal(alone!.status, SEND_ALONE);
    assert.equal(small!.status, 200);
    assert.equal((await t.req("GET", "/v1/objects/b/s/big")).body.length, big.length);
  });

  it("memory backend: a sub-response over 1 MiB held in memory is SEND_ALONE too, and the server keeps serving", async () => {
    const m = await startTestCache({ storage: { kind: "memory", maxBytes: 64 * 1024 * 1024, spillDir: tempDir() } });
    try {
      const big = Buffer.alloc(1024 * 1024 + 1, 9);
      await m.req("PUT", "/v1/objects/b/s/big", { body: big });
      const res = await m.req("POST", "/v1/batch", {
        body: Buffer.from(
          encodeBatchRequest([
            { method: "GET", path: "/v1/objects/b/s/big", headers: {} },
            { method: "GET", path: "/v1/stat/b/s/big", headers: {} },
          ]),
        ),
      });
      const [alone, stat] = decodeBatchResponse(res.body, 2);
      assert.equal(alone!.status, SEND_ALONE);
      assert.equal(stat!.status, 200);
      assert.equal((await m.req("GET", "/v1/objects/b/s/big")).body.length, big.length);
    } finally {
      await m.close();
    }
  });

  it("refuses a malformed batch with 400 naming the item and field, and applies none of it", async () => {
    const cases: [unknown, string][] = [
      [{ not: "a list" }, "batch"],
      [[], "batch"],
      [
        [
          ["PUT", "/v1/objects/b/s/m1", {}, enc("x")],
          ["BREW", "/v1/objects/b/s/m2", {}, null],
        ],
        "batch[1].method",
      ],
      [[["GET", "/v1/batch", {}, null]], "batch[0].path"],
      [[["GET", "/elsewhere", {}, null]], "batch[0].path"],
      [[["PUT", "/v1/objects/b/s/m1", { "x-n": 1 }, null]], "batch[0].headers.x-n"],
      [[["PUT", "/v1/objects/b/s/m1", {}, "text"]], "batch[0].body"],
      [[["GET", "/v1/objects/b/s/m1"]], "batch[0]"],
    ];
    for (const [value, field] of cases) {
      const res = await t.req("POST", "/v1/batch", { body: Buffer.from(encodeValue(value)) });
      assertError(res, 400, "INVALID_ARGUMENT", undefined, field);
    }
    assertError(await t.req("POST", "/v1/batch", { body: "not the codec" }), 400, "INVALID_ARGUMENT");
    assertError(await t.req("GET", "/v1/batch"), 405, "INVALID_ARGUMENT", "POST");
    assert.equal((await t.req("GET", "/v1/objects/b/s/m1")).status, 404, "nothing of a refused batch is applied");
  });
});

describe("cache server: token", () => {
  it("requires `authorization: Bearer <token>` on every route when a token is set", async () => {
    const t = await startTestCache({ token: "s3cret" });
    try {
      for (const headers of [{}, { authorization: "Bearer wrong" }, { authorization: "s3cret" }]) {
        assertError(await t.req("GET", "/v1/health", { headers }), 401, "UNAUTHENTICATED", "token");
        assertError(await t.req("PUT", "/v1/objects/a/s/x", { headers, body: "x" }), 401, "UNAUTHENTICATED");
        const sneaked = Buffer.from(
          encodeBatchRequest([{ method: "PUT", path: "/v1/objects/a/s/x", headers: {}, body: new Uint8Array(1) }]),
        );
        assertError(await t.req("POST", "/v1/batch", { headers, body: sneaked }), 401, "UNAUTHENTICATED");
      }
      const auth = { authorization: "Bearer s3cret" };
      assert.equal((await t.req("PUT", "/v1/objects/a/s/x", { headers: auth, body: "x" })).status, 201);
      assert.equal((await t.req("GET", "/v1/objects/a/s/x", { headers: auth })).body.toString(), "x");
    } finally {
      await t.close();
    }
  });

  it("refuses to listen beyond loopback without a token", async () => {
    await assert.rejects(
      startCacheServer({ host: "0.0.0.0", port: 0, storage: { kind: "fs", dir: tempDir() } }),
      (err: Error & { field?: string }) => err.field === "host" && /requires a token/.test(err.message),
    );
  });
});

describe("cache server: bad input", () => {
  let t: TestCache;
  before(async () => (t = await startTestCache()));
  after(() => t.close());

  for (const [name, rawPath, rule] of [
    ["a `..` component", "app/../etc", '".."'],
    ["`..` inside a component", "app/s/a..b", '".."'],
    ["an encoded `..`", "app/%2e%2e/x", '".."'],
    ["a backslash", "app/s/a\\b", "backslash"],
    ["an absolute path", "/etc/passwd/x", "absolute path"],
    ["an empty component", "app//x", "empty component"],
    ["a trailing slash", "app/s/x/", "empty component"],
    ["a space", "app/s/a%20b", "may only contain"],
    ["a bad character", "app/s/a$b", "may only contain"],
    ["a leading dot", "app/s/.hidden", 'must not start with "."'],
    ["a leading dash", "app/-s/x", 'must not start with "." or "-"'],
    ["an encoded slash", "app%2Fs/x/y", "percent-encoded"],
    ["an encoded backslash", "app/s/a%5Cb", "percent-encoded"],
    ["bad percent-encoding", "app/s/%zz", "percent-encoding"],
    ["too many components", "app/s/x/y", "<app>/<session>/<id>"],
    ["too few components", "app", "<app>/<session>/<id>"],
    ["a 254-character component", `app/s/${"x".repeat(254)}`, "at most 253"],
  ] as const) {
    it(`rejects a key with ${name} (400, field key), storing nothing`, async () => {
      for (const method of ["PUT", "GET", "PATCH"]) {
        const res = await t.req(method, `/v1/objects/${rawPath}`, { body: method === "GET" ? undefined : "data" });
        assertError(res, 400, "INVALID_ARGUMENT", rule, "key");
      }
      assertError(await t.req("GET", `/v1/stat/${rawPath}`), 400, "INVALID_ARGUMENT", rule, "key");
      assert.deepEqual((await t.req("GET", "/v1/list?prefix=app")).json(), { objects: [] });
    });
  }

  it("rejects a bad prefix for put, delete and list (field prefix)", async () => {
    assertError(await t.req("POST", "/v1/objects/app/..", { body: "x" }), 400, "INVALID_ARGUMENT", '".."', "prefix");
    assertError(await t.req("DELETE", "/v1/objects/app/.."), 400, "INVALID_ARGUMENT", '".."', "prefix");
    assertError(await t.req("DELETE", "/v1/objects/..%2F/*"), 400, "INVALID_ARGUMENT", "percent-encoded");
    assertError(await t.req("GET", "/v1/list?prefix=../x"), 400, "INVALID_ARGUMENT", '".."', "prefix");
  });

  it("a get of a deleted key is 404", async () => {
    await t.req("PUT", "/v1/objects/app/del/x", { body: "x" });
    await t.req("DELETE", "/v1/objects/app/del/x");
    assertError(await t.req("GET", "/v1/objects/app/del/x"), 404, "NOT_FOUND", "app/del/x");
    const head = await t.req("HEAD", "/v1/objects/app/del/x");
    assert.equal(head.status, 404);
    assert.equal(head.headers[ERROR_CODE_HEADER], "NOT_FOUND");
    await t.req("DELETE", "/v1/objects/app/*");
  });

  for (const [name, announced, sent] of [
    ["a small body (1000 announced, 10 sent)", 1000, 10],
    ["a large body (10 MiB announced, 1 MiB sent)", 10 * 1024 * 1024, 1024 * 1024],
  ] as const) {
    it(`a truncated upload of ${name} changes nothing and leaves no temp file`, async () => {
      const key = `trunc/s/x${announced}`;
      await t.req("PUT", `/v1/objects/${key}`, { body: "old" });
      await truncatedPut(t.cache.port, `/v1/objects/${key}`, announced, sent);
      await tempFilesGone(t.dir);
      const got = await t.req("GET", `/v1/objects/${key}`);
      assert.equal(got.body.toString(), "old");
      assert.equal(got.headers["kiln-version"], "1");
      await truncatedPut(t.cache.port, `/v1/objects/${key}`, announced, sent, "PATCH");
      await tempFilesGone(t.dir);
      assert.equal((await t.req("GET", `/v1/stat/${key}`)).json<Ref>().version, 1);
      // The key is not left locked by the aborted patch.
      assert.equal((await t.req("PATCH", `/v1/objects/${key}`, { body: "+" })).json<Ref>().version, 2);
    });
  }

  it("rejects a malformed kiln-sha256 header", async () => {
    assertError(
      await t.req("PUT", "/v1/objects/app/h/x", { body: "x", headers: { "kiln-sha256": "abc" } }),
      400,
      "INVALID_ARGUMENT",
      "64 hex",
      "kiln-sha256",
    );
  });

  it("maxObjectBytes: a larger body is 413 and nothing changes", async () => {
    const small = await startTestCache({ maxObjectBytes: 100 * 1024 });
    try {
      await small.req("PUT", "/v1/objects/app/s/x", { body: "ok" });
      assertError(
        await small.req("PUT", "/v1/objects/app/s/x", { body: Buffer.alloc(200 * 1024) }),
        413,
        "RESOURCE_EXHAUSTED",
        "maxObjectBytes",
      );
      assertError(
        await small.req("PATCH", "/v1/objects/app/s/x", { body: Buffer.alloc(100 * 1024) }),
        413,
        "RESOURCE_EXHAUSTED",
      );
      assert.equal((await small.req("GET", "/v1/objects/app/s/x")).body.toString(), "ok");
    } finally {
      await small.close();
    }
  });
});

/**
 * Starts an upload announcing `announced` bytes; the caller writes the body (or not) on `socket`.
 * It asks for `100 Continue`, which the server sends as it takes the request up: `answered(100)` says
 * the upload has reached the key (it holds it, or waits for it).
 */
function rawUpload(port: number, method: string, urlPath: string, announced: number) {
  const socket = net.connect(port, "127.0.0.1");
  let received = "";
  const changes = new EventEmitter();
  socket.on("data", (d: Buffer) => {
    received += d.toString("latin1");
    changes.emit("change");
  });
  socket.on("error", () => undefined);
  socket.write(
    `${method} ${urlPath} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: ${announced}\r\n\r\n`,
  );
  const answered = (status: number) =>
    untilChanged(changes, () => received.includes(`HTTP/1.1 ${status} `), 5_000, `${status} to ${method} ${urlPath}`);
  return { socket, answered };
}

/** Sends the headers and `sent` bytes of an upload announcing `announced`, then drops the connection. */
async function truncatedPut(port: number, urlPath: string, announced: number, sent: number, method = "PUT") {
  const upload = rawUpload(port, method, urlPath, announced);
  // The body follows once the server reads it, so it is cut mid-stream rather than before the server began.
  await upload.answered(100);
  await new Promise<void>((resolve) => upload.socket.write(Buffer.alloc(sent, 1), () => resolve()));
  upload.socket.destroy();
}

/** Resolves once the cache's tmp/ is empty again (an aborted upload's temp file is removed after the abort). */
function tempFilesGone(dir: string): Promise<boolean> {
  const tmp = path.join(dir, "tmp");
  return untilDirChanges(tmp, () => fs.readdirSync(tmp).length === 0, 5_000, "the temp file to be removed");
}
