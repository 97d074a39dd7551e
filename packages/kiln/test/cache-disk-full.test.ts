import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { startCacheServer, type CacheServer } from "../src/cache/server.js";
import { request } from "./support/cache-http.js";
import { tempDir } from "./support/control-plane.js";

const isRoot = process.getuid?.() === 0;

describe("the object cache on a full disk", { skip: isRoot ? false : "needs root to mount a 2 MiB tmpfs" }, () => {
  let mount: string;
  let cache: CacheServer;
  before(async () => {
    mount = tempDir("full-disk");
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mount]);
    cache = await startCacheServer({ port: 0, storage: { kind: "fs", dir: mount } });
  });
  after(async () => {
    await cache?.close();
    if (mount) execFileSync("umount", [mount]);
  });

  it("refuses a write that does not fit with 507 RESOURCE_EXHAUSTED and keeps nothing of it", async () => {
    const res = await request(cache.endpoint, "PUT", "/v1/objects/app/s1/big", {
      body: Buffer.alloc(3 * 1024 * 1024, 7),
    });
    assert.equal(res.status, 507, res.body.toString());
    assert.equal(res.json().code, "RESOURCE_EXHAUSTED");
    assert.match(String(res.json().message), /the cache's storage is full \(ENOSPC\); nothing of this write was kept/);
    assert.deepEqual(fs.readdirSync(path.join(mount, "tmp")), [], "no partial temp file");
    assert.deepEqual(fs.readdirSync(path.join(mount, "blobs")), [], "no partial blob");
    assert.equal((await request(cache.endpoint, "GET", "/v1/stat/app/s1/big")).status, 404);
  });

  it("still takes a write that fits afterwards", async () => {
    const res = await request(cache.endpoint, "PUT", "/v1/objects/app/s1/small", { body: "hello" });
    assert.equal(res.status, 201, res.body.toString());
  });
});
