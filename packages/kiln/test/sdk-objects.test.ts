import {
  configureObjects,
  defaultObjectCache,
  deleteObjects,
  downloadObject,
  getObject,
  listObjects,
  loadCacheConfig,
  ObjectCache,
  patchObject,
  putObject,
  statObject,
  updateObject,
  uploadObject,
} from "@kiln/sdk";
import {
  ErrorCode,
  FailedPreconditionError,
  InvalidArgumentError,
  KilnError,
  NotFoundError,
  ObjectRef,
  TimeoutError,
  UnauthenticatedError,
  decodeObjectRef,
  encodeObjectRef,
} from "@kiln/protocol";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { decodeBatchRequest, encodeBatchResponse } from "@kiln/protocol/cache";
import { deferred } from "../../../test/support/until.js";
import { within } from "../../../test/support/within.js";
import { startCacheServer } from "../src/cache/server.js";
import { PackageServer, SilentServer } from "./support/agent-packages-fixtures.js";
import { tempDir } from "./support/control-plane.js";
import { TcpProxy } from "./support/tcp-proxy.js";
import { closedPort } from "./cli-helpers.js";

type CacheServer = Awaited<ReturnType<typeof startCacheServer>>;

async function rejectsWith(
  p: Promise<unknown>,
  type: abstract new (...a: never[]) => Error,
  text: string,
  field?: string,
) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof type, `expected ${type.name}, got ${String(err)}`);
    assert.ok(err.message.includes(text), `"${err.message}" should mention "${text}"`);
    if (field !== undefined) assert.equal((err as InvalidArgumentError).field, field);
    return true;
  });
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

describe("sdk objects: values, versions and patches", () => {
  let dir: string;
  let server: CacheServer;
  let cache: ObjectCache;
  before(async () => {
    dir = tempDir("sdk-objects");
    server = await startCacheServer({ port: 0, storage: { kind: "fs", dir } });
    cache = new ObjectCache({ endpoint: server.endpoint });
  });
  after(async () => {
    cache.close();
    await server.close();
  });

  it("puts to a prefix (new id) and to a key, and reads the values back intact", async () => {
    const value = {
      text: "héllo",
      n: 42,
      big: 2n ** 70n,
      when: new Date(0),
      tags: new Set(["a", "b"]),
      map: new Map<string, number[]>([["k", [1, 2]]]),
      bytes: new Float64Array([1.5, -2]),
    };
    const ref = await cache.putObject("app/s1", value);
    assert.ok(ref instanceof ObjectRef);
    assert.equal(ref.endpoint, server.endpoint);
    assert.match(ref.key, /^app\/s1\/[A-Za-z0-9_-]{16,}$/);
    assert.equal(ref.version, 1);
    assert.deepEqual(await cache.getObject(ref), value);

    const keyed = await cache.putObject("app/s1/fixed", [1, 2, 3]);
    assert.equal(keyed.key, "app/s1/fixed");
    assert.deepEqual(await cache.getObject("app/s1/fixed"), [1, 2, 3]);
    assert.deepEqual(await cache.getObject("cache://app/s1/fixed"), [1, 2, 3]);
    assert.deepEqual(await cache.getObject(`${server.endpoint}/v1/objects/app/s1/fixed`), [1, 2, 3]);
  });

  it("update bumps the version and drops deltas; every read sees the latest version", async () => {
    const v1 = await cache.putObject("app/s2/counter", { count: 1 });
    const p2 = await cache.patchObject(v1, { extra: true });
    const v3 = await cache.updateObject(v1, { count: 3 });
    assert.deepEqual([v1.version, p2.version, v3.version], [1, 2, 3]);
    assert.deepEqual(await cache.getObject(v1), { count: 3 });
    const stat = await cache.statObject("app/s2/counter");
    assert.equal(stat.version, 3);
    assert.equal(stat.deltas, 0);
    assert.equal(stat.sha256, v3.sha256);
  });

  it("merges deltas by default: arrays append, strings concatenate, Maps set, objects assign", async () => {
    const arr = await cache.putObject("app/s3/arr", [1]);
    await cache.patchObject(arr, [2, 3]);
    await cache.patchObject(arr, 4);
    assert.deepEqual(await cache.getObject(arr), [1, 2, 3, 4]);

    const str = await cache.putObject("app/s3/str", "ab");
    await cache.patchObject(str, "cd");
    assert.equal(await cache.getObject(str), "abcd");

    const map = await cache.putObject("app/s3/map", new Map([["a", 1]]));
    await cache.patchObject(
      map,
      new Map([
        ["a", 2],
        ["b", 3],
      ]),
    );
    assert.deepEqual(
      await cache.getObject(map),
      new Map([
        ["a", 2],
        ["b", 3],
      ]),
    );

    const obj = await cache.putObject("app/s3/obj", { a: 1, b: 1 });
    const last = await cache.patchObject(obj, { b: 2 });
    assert.equal(last.version, 2);
    assert.deepEqual(await cache.getObject(obj), { a: 1, b: 2 });
  });

  it("asks for a merge function when there is no default, and uses the one given", async () => {
    const num = await cache.putObject("app/s4/num", 10);
    await cache.patchObject(num, 5);
    await cache.patchObject(num, 7);
    await rejectsWith(cache.getObject(num), FailedPreconditionError, "merge");
    assert.equal(
      await cache.getObject<number>(num, {
        merge: (base, deltas) => base + (deltas as number[]).reduce((a, b) => a + b),
      }),
      22,
    );

    const mixed = await cache.putObject("app/s4/mixed", "text");
    await cache.patchObject(mixed, 1);
    await rejectsWith(cache.getObject(mixed), FailedPreconditionError, "merge");
  });

  it("deletes a key, a session prefix and a whole application; reads of deleted keys are NotFound", async () => {
    await cache.putObject("del/s1/a", 1);
    await cache.putObject("del/s1/b", 2);
    await cache.putObject("del/s2/c", 3);
    await cache.putObject("del/s3/d", 4);
    assert.deepEqual(
      (await cache.listObjects("del")).map((o) => o.key),
      ["del/s1/a", "del/s1/b", "del/s2/c", "del/s3/d"],
    );
    assert.equal(await cache.deleteObjects("del/s1/a"), 1);
    await rejectsWith(cache.getObject("del/s1/a"), NotFoundError, "del/s1/a");
    await rejectsWith(cache.deleteObjects("del/s1/a"), NotFoundError, "del/s1/a");
    assert.equal(await cache.deleteObjects("del/s1"), 1);
    assert.equal(await cache.deleteObjects("del/empty"), 0);
    assert.equal(await cache.deleteObjects("del/*"), 2);
    assert.deepEqual(await cache.listObjects("del"), []);
    await rejectsWith(cache.getObject("del/s2/c"), NotFoundError, "del/s2/c");
    await rejectsWith(cache.patchObject("del/s2/c", 1), NotFoundError, "del/s2/c");
  });

  it("lists across pages", async () => {
    await Promise.all(
      Array.from({ length: 1205 }, (_, i) => cache.putObject(`many/s/k${String(i).padStart(5, "0")}`, i)),
    );
    const all = await cache.listObjects("many/s");
    assert.equal(all.length, 1205);
    assert.equal(all[1204]!.key, "many/s/k01204");
  });

  it("keeps many requests in flight on a pool of sockets without mixing up replies", async () => {
    const refs = await Promise.all(Array.from({ length: 500 }, (_, i) => cache.putObject("par/s", { i })));
    const values = await Promise.all(refs.map((r) => cache.getObject<{ i: number }>(r)));
    assert.deepEqual(
      values.map((v) => v.i),
      refs.map((_, i) => i),
    );
  });

  it("encodes refs to bytes and back", async () => {
    const ref = await cache.putObject("app/s5", "x");
    const back = decodeObjectRef(encodeObjectRef(ref));
    assert.deepEqual(back.toJSON(), ref.toJSON());
    assert.equal(await cache.getObject(back), "x");
  });
});

describe("sdk objects: small requests of one turn go as batches", () => {
  let dir: string;
  let server: CacheServer;
  before(async () => {
    dir = tempDir("sdk-batches");
    server = await startCacheServer({ port: 0, storage: { kind: "fs", dir }, token: "t0ken" });
  });
  after(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("concurrent puts and gets each get their own answer, errors included", async () => {
    const writer = new ObjectCache({ endpoint: server.endpoint, token: "t0ken" });
    const reader = new ObjectCache({ endpoint: server.endpoint, token: "t0ken", localCacheBytes: 0 });
    try {
      const refs = await Promise.all(Array.from({ length: 300 }, (_, i) => writer.putObject("bat/s", { i })));
      assert.equal(new Set(refs.map((r) => r.key)).size, 300, "each put made its own object");
      const values = await Promise.all(refs.map((r) => reader.getObject<{ i: number }>(r)));
      assert.deepEqual(
        values.map((v) => v.i),
        Array.from({ length: 300 }, (_, i) => i),
      );
      const [found, missing] = await Promise.allSettled([reader.getObject(refs[0]!), reader.getObject("bat/s/none")]);
      assert.deepEqual(found, { status: "fulfilled", value: { i: 0 } });
      assert.ok(missing.status === "rejected" && missing.reason instanceof NotFoundError, String(missing));
    } finally {
      writer.close();
      reader.close();
    }
  });

  it("a large object read in the same turn as small ones is fetched on its own", async () => {
    const cache = new ObjectCache({ endpoint: server.endpoint, token: "t0ken", localCacheBytes: 0 });
    try {
      const big = randomBytes(3 * 1024 * 1024);
      const bigRef = await cache.putObject("bat/s", big);
      const smallRef = await cache.putObject("bat/s", "small");
      const [gotBig, gotSmall] = await Promise.all([cache.getObject<Buffer>(bigRef), cache.getObject(smallRef)]);
      assert.ok(Buffer.from(gotBig).equals(big));
      assert.equal(gotSmall, "small");
    } finally {
      cache.close();
    }
  });

  it("a refused batch (wrong token) fails every request in it with the server's error", async () => {
    const cache = new ObjectCache({ endpoint: server.endpoint, token: "wrong" });
    try {
      const results = await Promise.allSettled([1, 2, 3].map((i) => cache.putObject("bat/s", i)));
      for (const r of results) assert.ok(r.status === "rejected" && r.reason instanceof UnauthenticatedError);
    } finally {
      cache.close();
    }
  });
});

describe("sdk objects: incremental reads and the client-side cache", () => {
  let server: CacheServer;
  let proxy: TcpProxy;
  let writer: ObjectCache;
  let reader: ObjectCache;
  before(async () => {
    // In front of the server, counting what reads cost; the server advertises it, so it starts first.
    proxy = new TcpProxy();
    const proxied = await proxy.start();
    server = await startCacheServer({
      port: 0,
      advertiseEndpoint: proxied,
      storage: { kind: "fs", dir: tempDir("sdk-inc") },
    });
    proxy.target = server.port;
    writer = new ObjectCache({ endpoint: proxied });
    reader = new ObjectCache({ endpoint: proxied, localCacheBytes: 3 * 1024 * 1024 });
  });
  after(async () => {
    writer.close();
    reader.close();
    await proxy.close();
    await server.close();
  });

  async function bytesFor(read: () => Promise<unknown>): Promise<number> {
    const before = proxy.bytesDown;
    await read();
    return proxy.bytesDown - before;
  }

  it("revalidates: unchanged → not refetched, patched → only the new deltas, replaced → everything", async () => {
    const base = Array.from({ length: 1 << 16 }, (_, i) => `row-${i}`); // about 0.7 MB encoded
    const ref = await writer.putObject("inc/s/big", base);
    const full = await bytesFor(() => reader.getObject(ref));
    assert.ok(full > ref.size, `first read moved ${full} bytes for a ${ref.size}-byte object`);

    assert.ok((await bytesFor(() => reader.getObject(ref))) < 1024, "an unchanged object is not sent again");

    await writer.patchObject(ref, ["delta-1"]);
    await writer.patchObject(ref, ["delta-2", "delta-3"]);
    let merged: string[] = [];
    const incremental = await bytesFor(async () => (merged = await reader.getObject<string[]>(ref)));
    assert.ok(incremental < 2048, `after two small patches the read moved ${incremental} bytes`);
    assert.equal(merged.length, base.length + 3);
    assert.deepEqual(merged.slice(-4), [base[base.length - 1], "delta-1", "delta-2", "delta-3"]);

    // What a caller does to a returned value never leaks into the next read.
    merged.length = 0;
    assert.equal((await reader.getObject<string[]>(ref)).length, base.length + 3);

    await writer.updateObject(ref, ["replaced"]);
    assert.deepEqual(await reader.getObject(ref), ["replaced"]);
  });

  it("notices a key deleted and written again elsewhere at the same version", async () => {
    const ref = await writer.putObject("inc/s/reborn", "first life");
    assert.equal(await reader.getObject(ref), "first life");
    await writer.deleteObjects(ref.key);
    await writer.putObject(ref.key, "second life");
    assert.equal(await reader.getObject(ref), "second life"); // same version 1: a 304 would be wrong

    await writer.deleteObjects(ref.key);
    const third = await writer.putObject(ref.key, "third");
    await writer.patchObject(third, " life");
    assert.equal(await reader.getObject(ref), "third life"); // deltas after "version 1" of another base
  });

  it("a writer's own reads are served from what it wrote", async () => {
    const ref = await writer.putObject("inc/s/own", "x".repeat(200_000));
    assert.ok((await bytesFor(() => writer.getObject(ref))) < 1024);
    await writer.patchObject(ref, "y");
    assert.ok((await bytesFor(() => writer.getObject(ref))) < 1024);
    assert.equal((await writer.getObject<string>(ref)).length, 200_001);
  });

  it("is bounded by bytes: the least recently used object is dropped", async () => {
    const a = await writer.putObject("inc/lru/a", randomBytes(2 * 1024 * 1024));
    const b = await writer.putObject("inc/lru/b", randomBytes(2 * 1024 * 1024));
    await reader.getObject(a);
    await reader.getObject(b); // 4 MiB held would be over the 3 MiB budget: a goes
    assert.ok((await bytesFor(() => reader.getObject(b))) < 1024);
    assert.ok((await bytesFor(() => reader.getObject(a))) > 2 * 1024 * 1024);
  });
});

describe("sdk objects: files", () => {
  let dir: string;
  let server: CacheServer;
  let cache: ObjectCache;
  let files: string;
  before(async () => {
    dir = tempDir("sdk-files-store");
    files = tempDir("sdk-files");
    server = await startCacheServer({ port: 0, storage: { kind: "fs", dir } });
    cache = new ObjectCache({ endpoint: server.endpoint });
  });
  after(async () => {
    cache.close();
    await server.close();
  });

  it("uploads and downloads a multi-MiB file with its sha256 checked, leaving no temp files", async () => {
    const data = randomBytes(12 * 1024 * 1024 + 7);
    const source = path.join(files, "input.bin");
    fs.writeFileSync(source, data);
    const ref = await cache.uploadObject("files/s1/input.bin", source);
    assert.equal(ref.size, data.length);
    assert.equal(ref.sha256, sha256(data));
    const prefixed = await cache.uploadObject("files/s1", source);
    assert.notEqual(prefixed.key, ref.key);

    const outDir = path.join(files, "out");
    fs.mkdirSync(outDir);
    const target = path.join(outDir, "copy.bin");
    await cache.downloadObject(ref, target);
    assert.ok(fs.readFileSync(target).equals(data));
    assert.deepEqual(fs.readdirSync(outDir), ["copy.bin"]);
  });

  it("uploadObject stores bytes in memory as raw bytes, the same object a file with them makes", async () => {
    const bytes = randomBytes(100_000);
    const fromBytes = await cache.uploadObject("files/s7/mem", bytes);
    const source = path.join(files, "mem.bin");
    fs.writeFileSync(source, bytes);
    const fromFile = await cache.uploadObject("files/s7/file", source);
    assert.deepEqual([fromBytes.size, fromBytes.sha256], [fromFile.size, fromFile.sha256]);
    const target = path.join(files, "mem.copy");
    await cache.downloadObject(fromBytes, target);
    assert.ok(fs.readFileSync(target).equals(bytes));
  });

  it("downloadObject with sha256 fetches only that content: a changed object is refused, nothing written", async () => {
    const source = path.join(files, "pinned.bin");
    fs.writeFileSync(source, "first");
    const first = await cache.uploadObject("files/s6/pinned", source);
    const outDir = path.join(files, "pinned-out");
    fs.mkdirSync(outDir);
    await cache.downloadObject(first, path.join(outDir, "a.bin"), { sha256: first.sha256 });
    assert.equal(fs.readFileSync(path.join(outDir, "a.bin"), "utf8"), "first");

    fs.writeFileSync(source, "second");
    await cache.uploadObject("files/s6/pinned", source);
    await rejectsWith(
      cache.downloadObject(first, path.join(outDir, "b.bin"), { sha256: first.sha256 }),
      FailedPreconditionError,
      `has changed: it now has sha256 ${sha256(Buffer.from("second"))}, not ${first.sha256}`,
    );
    assert.deepEqual(fs.readdirSync(outDir), ["a.bin"]);
    // Without the pin, the current content is what a download gets.
    await cache.downloadObject(first, path.join(outDir, "c.bin"));
    assert.equal(fs.readFileSync(path.join(outDir, "c.bin"), "utf8"), "second");
  });

  it("downloads an object with deltas as base bytes then delta bytes, verifying the hash chain", async () => {
    const ref = await cache.putObject("files/s2/log", "start");
    const last = await cache.patchObject(ref, "-more");
    const target = path.join(files, "log.bin");
    await cache.downloadObject(ref, target);
    assert.equal(fs.statSync(target).size, last.size);
  });

  it("refuses a download whose bytes do not match the server's sha256 and leaves nothing behind", async () => {
    const data = randomBytes(3 * 1024 * 1024);
    const source = path.join(files, "victim.bin");
    fs.writeFileSync(source, data);
    await cache.uploadObject("files/s3/victim", source);
    const blob = findFiles(dir).find((f) => fs.statSync(f).size === data.length);
    assert.ok(blob, "the fs backend keeps the upload as a file of the same size");
    const fd = fs.openSync(blob, "r+");
    fs.writeSync(fd, Buffer.from("corrupted!"), 0, 10, 1024 * 1024);
    fs.closeSync(fd);

    const outDir = path.join(files, "corrupt-out");
    fs.mkdirSync(outDir);
    const target = path.join(outDir, "victim.bin");
    await rejectsWith(cache.downloadObject("files/s3/victim", target), KilnError, "sha256");
    assert.deepEqual(fs.readdirSync(outDir), []);
  });

  it("a download into a missing directory fails without creating anything", async () => {
    await cache.putObject("files/s4/x", 1);
    const target = path.join(files, "no-such-dir", "x.bin");
    await assert.rejects(cache.downloadObject("files/s4/x", target), /ENOENT/);
    assert.equal(fs.existsSync(path.dirname(target)), false);
  });

  it("an upload of a missing file fails before any request", async () => {
    await assert.rejects(cache.uploadObject("files/s5/x", path.join(files, "absent.bin")), /ENOENT/);
    await rejectsWith(cache.statObject("files/s5/x"), NotFoundError, "files/s5/x");
  });
});

function findFiles(root: string): string[] {
  return fs
    .readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name));
}

describe("sdk objects: trust, validation and failures", () => {
  let server: CacheServer;
  let foreign: PackageServer;
  let foreignEndpoint: string;
  let cache: ObjectCache;
  before(async () => {
    server = await startCacheServer({ port: 0, storage: { kind: "fs", dir: tempDir("sdk-trust") } });
    cache = new ObjectCache({ endpoint: server.endpoint });
    foreign = new PackageServer();
    foreignEndpoint = await foreign.start();
  });
  after(async () => {
    cache.close();
    await foreign.close();
    await server.close();
  });

  it("refuses refs and URLs naming another endpoint, without sending them anything", async () => {
    const ours = await cache.putObject("trust/s/x", "mine");
    const theirs = ObjectRef.from({ ...ours.toJSON(), endpoint: foreignEndpoint });
    const file = path.join(tempDir("sdk-trust-out"), "x");
    for (const attempt of [
      cache.getObject(theirs),
      cache.getObject({ ...ours.toJSON(), endpoint: foreignEndpoint }),
      cache.getObject(`${foreignEndpoint}/v1/objects/trust/s/x`),
      cache.updateObject(theirs, "evil"),
      cache.patchObject(theirs, "evil"),
      cache.downloadObject(theirs, file),
    ])
      await rejectsWith(attempt, InvalidArgumentError, foreignEndpoint, "ref.endpoint");
    assert.equal(foreign.requests.size, 0);
    assert.equal(fs.existsSync(file), false);
    assert.equal(await cache.getObject(ours), "mine");
  });

  it("accepts refs naming the endpoint the configured server advertises", async () => {
    const other = await startCacheServer({
      port: 0,
      advertiseEndpoint: "http://cache.example:7422",
      storage: { kind: "memory", maxBytes: 1 << 20, spillDir: tempDir("sdk-adv") },
    });
    const client = new ObjectCache({ endpoint: `http://127.0.0.1:${other.port}` });
    try {
      const ref = await client.putObject("adv/s/x", 7);
      assert.equal(ref.endpoint, "http://cache.example:7422");
      assert.equal(await client.getObject(ref), 7);
    } finally {
      client.close();
      await other.close();
    }
  });

  it("refuses traversal and malformed keys before any request", async () => {
    const counted = new ObjectCache({ endpoint: foreignEndpoint });
    const bad: [Promise<unknown>, string][] = [
      [counted.putObject("app/../etc", 1), "key"],
      [counted.putObject("/abs/s/x", 1), "key"],
      [counted.getObject("a//b/c"), "key"],
      [counted.getObject("cache://a/b/../c"), "key"],
      [counted.getObject("a\\b/c/d"), "key"],
      [counted.deleteObjects("app/%2e%2e"), "prefix"],
      [counted.deleteObjects("app/s/"), "key"],
      [counted.uploadObject("app/s/.hidden", "/dev/null"), "key"],
      [counted.statObject("app/s"), "key"],
      [counted.listObjects("../app"), "prefix"],
    ];
    for (const [attempt, field] of bad) await rejectsWith(attempt, InvalidArgumentError, "", field);
    counted.close();
    assert.equal(foreign.requests.size, 0);
  });

  it("maps a refused connection to UNAVAILABLE naming the endpoint", async () => {
    const nobody = `http://127.0.0.1:${await closedPort()}`;
    const client = new ObjectCache({ endpoint: nobody });
    await assert.rejects(client.getObject("a/b/c"), (err: unknown) => {
      assert.ok(err instanceof KilnError);
      assert.equal(err.code, ErrorCode.Unavailable);
      assert.ok(err.message.includes(nobody), err.message);
      return true;
    });
    client.close();
  });

  it("times out against a server that never answers", async () => {
    const silent = new SilentServer();
    const port = await silent.start();
    const client = new ObjectCache({ endpoint: `http://127.0.0.1:${port}`, requestTimeoutMs: 300 });
    try {
      await rejectsWith(client.getObject("a/b/c"), TimeoutError, "300 ms");
      await rejectsWith(client.putObject("a/b", "x"), TimeoutError, "300 ms");
      const dir = tempDir("sdk-timeout");
      const file = path.join(dir, "big.bin");
      fs.writeFileSync(file, randomBytes(8 * 1024 * 1024)); // more than the socket buffers take in
      await rejectsWith(client.uploadObject("a/b/c", file), TimeoutError, "300 ms");
      await rejectsWith(client.downloadObject("a/b/c", path.join(dir, "out.bin")), TimeoutError, "300 ms");
      assert.deepEqual(fs.readdirSync(dir), ["big.bin"]);
    } finally {
      client.close();
      await silent.close();
    }
  });

  it("reconnects after the server restarts", async () => {
    const dir = tempDir("sdk-restart");
    let restarting = await startCacheServer({ port: 0, storage: { kind: "fs", dir } });
    const { port } = restarting;
    const client = new ObjectCache({ endpoint: `http://127.0.0.1:${port}` });
    try {
      const ref = await client.putObject("re/s/x", "before");
      await restarting.close();
      restarting = await startCacheServer({ port, storage: { kind: "fs", dir } });
      assert.equal(await client.getObject(ref), "before");
      await client.updateObject(ref, "after");
      assert.equal(await client.getObject(ref), "after");
    } finally {
      client.close();
      await restarting.close();
    }
  });

  it("reads pipelined replies however they are framed and split", async () => {
    const stat = {
      key: "a/b/c",
      version: 2,
      size: 5,
      sha256: "0".repeat(64),
      baseVersion: 1,
      deltas: 1,
      createdAt: 1,
      updatedAt: 2,
    };
    const json = JSON.stringify(stat);
    const half = Math.floor(json.length / 2);
    const replies = [
      // An informational reply first, then a chunked body.
      "HTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" +
        `${half.toString(16)}\r\n${json.slice(0, half)}\r\n${(json.length - half).toString(16)}\r\n${json.slice(half)}\r\n0\r\n\r\n`,
      `HTTP/1.1 200 OK\r\ncontent-length: ${'{"objects":[]}'.length}\r\n\r\n{"objects":[]}`,
      // No length: the body ends with the connection.
      `HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n${json}`,
    ];
    const sockets = new Set<net.Socket>();
    const byteByByte = net.createServer((socket) => {
      sockets.add(socket);
      socket.on("error", () => {});
      let seen = "";
      let answered = 0;
      let sending = Promise.resolve();
      socket.on("data", (d: Buffer) => {
        seen += d.toString("latin1");
        while (seen.split("\r\n\r\n").length - 1 > answered && answered < replies.length) {
          const reply = replies[answered++]!;
          const last = answered === replies.length;
          sending = sending.then(async () => {
            for (const ch of reply) {
              socket.write(ch);
              await new Promise((r) => setImmediate(r));
            }
            if (last) socket.end();
          });
        }
      });
    });
    await new Promise<void>((resolve) => byteByByte.listen(0, "127.0.0.1", resolve));
    const client = new ObjectCache({
      endpoint: `http://127.0.0.1:${(byteByByte.address() as net.AddressInfo).port}`,
      maxConnections: 1,
      // This server speaks HTTP/1.1 framing only; what is under test is the pipelining.
      batchRequests: false,
    });
    try {
      const [a, list, b] = await Promise.all([
        client.statObject("a/b/c"),
        client.listObjects("a"),
        client.statObject("a/b/d"),
      ]);
      assert.deepEqual(a, stat);
      assert.deepEqual(list, []);
      assert.deepEqual(b, stat);
    } finally {
      client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => byteByByte.close(resolve));
    }
  });

  it("a large upload refused before its body is read gets the server's error, not a broken pipe", async () => {
    const guarded = await startCacheServer({
      port: 0,
      token: "s3cret",
      maxObjectBytes: 1024 * 1024,
      storage: { kind: "fs", dir: tempDir("sdk-refused") },
    });
    const source = path.join(tempDir("sdk-refused-src"), "big.bin");
    fs.writeFileSync(source, Buffer.alloc(32 * 1024 * 1024, 1));
    const wrongToken = new ObjectCache({ endpoint: guarded.endpoint, token: "wrong" });
    const rightToken = new ObjectCache({ endpoint: guarded.endpoint, token: "s3cret" });
    try {
      // Each refusal raced the client's writes; several in a row all have to come back as the server said.
      for (let i = 0; i < 6; i++) {
        await rejectsWith(wrongToken.uploadObject("big/s/x", source), UnauthenticatedError, "token");
        await rejectsWith(rightToken.uploadObject("big/s/x", source), KilnError, "maxObjectBytes");
      }
      assert.equal((await rightToken.listObjects("big")).length, 0);
    } finally {
      wrongToken.close();
      rightToken.close();
      await guarded.close();
    }
  });

  it("sends the token, and reports a missing one as UNAUTHENTICATED", async () => {
    const guarded = await startCacheServer({
      port: 0,
      token: "s3cret",
      storage: { kind: "fs", dir: tempDir("sdk-tok") },
    });
    const without = new ObjectCache({ endpoint: guarded.endpoint });
    const withToken = new ObjectCache({ endpoint: guarded.endpoint, token: "s3cret" });
    try {
      await rejectsWith(without.putObject("tok/s", 1), UnauthenticatedError, "");
      const ref = await withToken.putObject("tok/s", 1);
      assert.equal(await withToken.getObject(ref), 1);
    } finally {
      without.close();
      withToken.close();
      await guarded.close();
    }
  });
});

describe("sdk objects: configuration and the module-level functions", () => {
  let server: CacheServer;
  let dir: string;
  /** Stands for "no config": a named config file must exist. */
  let emptyConfig: string;
  before(async () => {
    dir = tempDir("sdk-config");
    emptyConfig = path.join(dir, "empty-config.yaml");
    fs.writeFileSync(emptyConfig, "");
    server = await startCacheServer({ port: 0, storage: { kind: "fs", dir: tempDir("sdk-config-store") } });
  });
  after(async () => {
    delete process.env.KILN_CACHE_ENDPOINT;
    delete process.env.KILN_CONFIG;
    (await defaultObjectCache()).close();
    await server.close();
  });

  it("resolves the cache endpoint: option, env, the file's context, then the default", () => {
    const configPath = path.join(dir, "config.yaml");
    fs.writeFileSync(
      configPath,
      [
        "current-context: local",
        "contexts:",
        "  - name: local",
        '    cluster: { endpoint: "http://127.0.0.1:7420", token: "ctx-token" }',
        '    cache: { endpoint: "http://10.1.1.1:7422/" }',
        "  - name: bare",
        '    cluster: { endpoint: "http://127.0.0.1:7420" }',
        "",
      ].join("\n"),
    );
    const fromFile = loadCacheConfig({ env: {}, configPath });
    assert.equal(fromFile.cacheEndpoint, "http://10.1.1.1:7422");
    assert.equal(fromFile.cacheToken, "ctx-token");
    assert.equal(fromFile.source, "config");

    const fromEnv = loadCacheConfig({
      env: { KILN_CACHE_ENDPOINT: "http://cache:1", KILN_TOKEN: "env-token" },
      configPath,
    });
    assert.deepEqual(
      [fromEnv.cacheEndpoint, fromEnv.cacheToken, fromEnv.source],
      ["http://cache:1", "env-token", "env"],
    );
    assert.equal(
      loadCacheConfig({ env: { FLAME_CACHE_ENDPOINT: "http://flame:9090" }, configPath }).cacheEndpoint,
      "http://flame:9090",
    );
    // The context's token stays with the context's cache.
    assert.equal(loadCacheConfig({ env: { KILN_CACHE_ENDPOINT: "http://cache:1" }, configPath }).cacheToken, undefined);

    const fromOption = loadCacheConfig({
      env: { KILN_CACHE_ENDPOINT: "http://cache:1" },
      configPath,
      cacheEndpoint: "http://opt:2",
    });
    assert.deepEqual([fromOption.cacheEndpoint, fromOption.source], ["http://opt:2", "options"]);

    const fallback = loadCacheConfig({ env: {}, configPath, context: "bare" });
    assert.deepEqual([fallback.cacheEndpoint, fallback.source], ["http://127.0.0.1:7422", "default"]);
  });

  it("names the field of a malformed cache endpoint", () => {
    const configPath = path.join(dir, "bad.yaml");
    fs.writeFileSync(configPath, "current-context: x\ncontexts:\n  - name: x\n    cache: { endpoint: 'cache:7422' }\n");
    assert.throws(
      () => loadCacheConfig({ env: {}, configPath }),
      (e: unknown) => e instanceof InvalidArgumentError && e.field === "contexts[0].cache.endpoint",
    );
    assert.throws(
      () => loadCacheConfig({ env: { KILN_CACHE_ENDPOINT: "ftp://x" }, configPath: emptyConfig }),
      (e: unknown) => e instanceof InvalidArgumentError && e.field === "KILN_CACHE_ENDPOINT",
    );
  });

  it("the module-level functions use the cache named by KILN_CACHE_ENDPOINT", async () => {
    process.env.KILN_CACHE_ENDPOINT = server.endpoint;
    process.env.KILN_CONFIG = emptyConfig;
    assert.equal((await defaultObjectCache()).endpoint, server.endpoint);

    let ref = await putObject("mod/s", ["a"]);
    ref = await patchObject(ref, ["b"]);
    assert.deepEqual(await getObject(ref), ["a", "b"]);
    ref = await updateObject(ref, ["c"]);
    assert.deepEqual(await getObject(ref), ["c"]);
    assert.equal((await statObject(ref.key)).version, 3);
    assert.deepEqual(
      (await listObjects("mod")).map((o) => o.key),
      [ref.key],
    );

    const file = path.join(dir, "payload.bin");
    fs.writeFileSync(file, randomBytes(100_000));
    const fileRef = await uploadObject("mod/files", file);
    await downloadObject(fileRef, path.join(dir, "payload.copy"));
    assert.ok(fs.readFileSync(path.join(dir, "payload.copy")).equals(fs.readFileSync(file)));
    assert.equal(await deleteObjects("mod/*"), 2);

    const other = configureObjects({ endpoint: `http://127.0.0.1:${await closedPort()}` });
    assert.equal(await defaultObjectCache(), other);
    await assert.rejects(
      getObject(ref.key),
      (e: unknown) => e instanceof KilnError && e.code === ErrorCode.Unavailable,
    );
  });
});

describe("sdk objects: pipelined requests on a connection that dies", () => {
  const sampleStat = {
    key: "a/b/c",
    version: 1,
    size: 1,
    sha256: "0".repeat(64),
    baseVersion: 1,
    deltas: 0,
    createdAt: 1,
    updatedAt: 1,
  };

  it("batches of reads pipelined on a connection that dies are sent again; every read gets its answer", async () => {
    let batches = 0;
    const firstBatchRead = deferred();
    const sockets = new Set<net.Socket>();
    // The first connection reads two pipelined batches whole and dies unanswered; later ones are answered.
    let connections = 0;
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on("error", () => {});
      const first = connections++ === 0;
      let buffered = Buffer.alloc(0);
      let readHere = 0;
      socket.on("data", (d: Buffer) => {
        buffered = Buffer.concat([buffered, d]);
        for (;;) {
          const end = buffered.indexOf("\r\n\r\n");
          if (end < 0) return;
          const head = buffered.subarray(0, end).toString("latin1");
          const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
          if (buffered.length < end + 4 + length) return;
          const requests = decodeBatchRequest(buffered.subarray(end + 4, end + 4 + length));
          buffered = buffered.subarray(end + 4 + length);
          batches++;
          firstBatchRead.resolve();
          if (first) {
            if (++readHere === 2) return void socket.destroy();
            continue;
          }
          const body = encodeBatchResponse(
            requests.map((r) => ({
              status: 200,
              headers: {},
              body: new TextEncoder().encode(JSON.stringify({ ...sampleStat, key: r.path.slice("/v1/stat/".length) })),
            })),
          );
          socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.byteLength}\r\n\r\n`);
          socket.write(body);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const client = new ObjectCache({
      endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      maxConnections: 1,
    });
    try {
      const keys = Array.from({ length: 32 }, (_, i) => `a/b/k${i}`);
      // Two batches, the second sent once the server has read the first: pipelined behind it on the one connection.
      const firstHalf = keys.slice(0, 16).map((k) => client.statObject(k));
      await within(firstBatchRead.promise, 10_000, "the first batch to reach the server");
      const stats = await Promise.all([...firstHalf, ...keys.slice(16).map((k) => client.statObject(k))]);
      assert.deepEqual(
        stats.map((s) => s.key),
        keys,
      );
      assert.equal(batches, 4, "two batches died unanswered, and both went again");
    } finally {
      client.close();
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("a write is not sent again (it may have been applied); reads are retried", async () => {
    const stat = JSON.stringify(sampleStat);
    let connections = 0;
    const seen: string[] = [];
    const sockets = new Set<net.Socket>();
    // The first connection reads three pipelined requests and dies without answering; later ones answer.
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on("error", () => {});
      const first = connections++ === 0;
      let text = "";
      socket.on("data", (d: Buffer) => {
        text += d.toString("latin1");
        const lines = text.match(/^(GET|PUT|PATCH|DELETE) \S+/gm) ?? [];
        if (first && lines.length >= 3) {
          seen.push(...lines.map((l) => `first: ${l}`));
          socket.destroy();
        } else if (!first) {
          for (const l of lines) {
            seen.push(`later: ${l}`);
            socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${stat.length}\r\n\r\n${stat}`);
          }
          text = "";
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    const client = new ObjectCache({ endpoint: `http://127.0.0.1:${port}`, maxConnections: 1, batchRequests: false });
    try {
      const [a, patch, b] = await Promise.allSettled([
        client.statObject("a/b/c"),
        client.patchObject("a/b/c", 1),
        client.statObject("a/b/d"),
      ]);
      assert.equal(a.status, "fulfilled", String(seen));
      assert.equal(b.status, "fulfilled", String(seen));
      assert.equal(patch.status, "rejected");
      const err = (patch as PromiseRejectedResult).reason as KilnError;
      assert.equal(err.code, ErrorCode.Unavailable);
      assert.match(err.message, /may or may not have been applied/);
      assert.equal(seen.filter((l) => l.includes("PATCH")).length, 1, String(seen));
    } finally {
      client.close();
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
