import { ErrorCode, KilnError } from "@kiln/protocol";
import { KilnClient, discoverCacheConfig, ObjectCache, putObject } from "@kiln/sdk";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { startCacheServer, type CacheServer } from "../src/cache/server.js";
import { closedPort, runCli, startCli } from "./cli-helpers.js";
import { startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";

const TOKEN = "cluster-info-token";

describe("the control plane advertises its object cache", () => {
  let cache: CacheServer;
  let t: TestControlPlane;
  let bare: TestControlPlane;
  let configPath: string;
  before(async () => {
    cache = await startCacheServer({ port: 0, token: TOKEN, storage: { kind: "fs", dir: tempDir("info-cache") } });
    t = await startTestControlPlane({ token: TOKEN, cacheEndpoint: cache.endpoint }, TOKEN);
    bare = await startTestControlPlane();
    // An empty config file: no contexts, so nothing but the options and the control plane decide.
    configPath = path.join(tempDir("info-config"), "empty.yaml");
    fs.writeFileSync(configPath, "");
  });
  after(async () => {
    await Promise.all([t.close(), bare.close()]);
    await cache.close();
  });

  it("GetClusterInfo: version, cache endpoint and counts; it needs the token like every call", async () => {
    const client = new KilnClient({ endpoint: t.cp.endpoint, token: TOKEN });
    try {
      const info = await client.clusterInfo();
      assert.match(info.version, /^\d+\.\d+\.\d+/);
      assert.equal(info.cacheEndpoint, cache.endpoint);
      assert.deepEqual([info.nodes, info.readyNodes, info.executors, info.openSessions], [0, 0, 0, 0]);
      await client.createSession({ application: "kiln-ping" });
      assert.equal((await client.clusterInfo()).openSessions, 1);
    } finally {
      client.close();
    }
    const anonymous = new KilnClient({ endpoint: t.cp.endpoint });
    try {
      await assert.rejects(
        anonymous.clusterInfo(),
        (e: unknown) => (e as KilnError).code === ErrorCode.Unauthenticated,
      );
    } finally {
      anonymous.close();
    }
  });

  it("discoverCacheConfig: explicit settings win, then the advertised cache (with the cluster token), then the default", async () => {
    const base = { endpoint: t.cp.endpoint, token: TOKEN, configPath };
    const advertised = await discoverCacheConfig({ ...base, env: {} });
    assert.deepEqual(
      [advertised.cacheEndpoint, advertised.cacheToken, advertised.source],
      [cache.endpoint, TOKEN, "control-plane"],
    );
    const fromEnv = await discoverCacheConfig({ ...base, env: { KILN_CACHE_ENDPOINT: "http://10.9.9.9:1" } });
    assert.deepEqual([fromEnv.cacheEndpoint, fromEnv.source], ["http://10.9.9.9:1", "env"]);
    const fromOption = await discoverCacheConfig({ ...base, env: {}, cacheEndpoint: "http://10.9.9.9:2" });
    assert.deepEqual([fromOption.cacheEndpoint, fromOption.source], ["http://10.9.9.9:2", "options"]);

    const notAdvertised = await discoverCacheConfig({ endpoint: bare.cp.endpoint, configPath, env: {} });
    assert.deepEqual([notAdvertised.cacheEndpoint, notAdvertised.source], ["http://127.0.0.1:7422", "default"]);
    const nobody = await discoverCacheConfig({
      endpoint: `http://127.0.0.1:${await closedPort()}`,
      configPath,
      env: {},
    });
    assert.deepEqual([nobody.cacheEndpoint, nobody.source], ["http://127.0.0.1:7422", "default"]);
    // A wrong port (the cache itself) is not a control plane: the default, and the process lives on.
    const wrongPort = await discoverCacheConfig({ endpoint: cache.endpoint, configPath, env: {} });
    assert.equal(wrongPort.source, "default");
  });

  it("the module-level object functions find the advertised cache from KILN_ENDPOINT alone", async () => {
    process.env.KILN_ENDPOINT = t.cp.endpoint;
    process.env.KILN_TOKEN = TOKEN;
    process.env.KILN_CONFIG = configPath;
    delete process.env.KILN_CACHE_ENDPOINT;
    try {
      const ref = await putObject("info-app/s1", { found: "through the control plane" });
      assert.equal(ref.endpoint, cache.endpoint);
      const direct = new ObjectCache({ endpoint: cache.endpoint, token: TOKEN });
      try {
        assert.deepEqual(await direct.getObject(ref), { found: "through the control plane" });
      } finally {
        direct.close();
      }
    } finally {
      delete process.env.KILN_ENDPOINT;
      delete process.env.KILN_TOKEN;
      delete process.env.KILN_CONFIG;
    }
  });

  it("/healthz answers without the token (liveness and which server), details only with it", async () => {
    for (const [url, server] of [
      [`${t.cp.httpEndpoint}/healthz`, "kiln-control-plane"],
      [`${cache.endpoint}/healthz`, "kiln-object-cache"],
    ] as const) {
      const anonymous = await fetch(url);
      assert.equal(anonymous.status, 200, url);
      assert.deepEqual(await anonymous.json(), { status: "ok", server });
      const withToken = (await (await fetch(url, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as {
        details: Record<string, unknown>;
      };
      assert.ok(withToken.details, url);
      assert.equal((await fetch(url, { method: "POST" })).status, 405, url);
    }
    const cpDetails = (await (
      await fetch(`${t.cp.httpEndpoint}/healthz`, { headers: { authorization: `Bearer ${TOKEN}` } })
    ).json()) as {
      details: Record<string, unknown>;
    };
    assert.equal(cpDetails.details.cacheEndpoint, cache.endpoint);
    assert.equal(cpDetails.details.endpoint, t.cp.endpoint);
    assert.equal(typeof cpDetails.details.openSessions, "number");
    // Every other route still needs the token.
    assert.equal((await fetch(`${cache.endpoint}/v1/health`)).status, 401);
    assert.equal((await fetch(`${cache.endpoint}/v1/list?prefix=info-app`)).status, 401);
  });
});

describe("kiln server --cache-endpoint", () => {
  it("advertises that cache to clients (kiln status shows where it came from)", async () => {
    const cacheEndpoint = `http://127.0.0.1:${await closedPort()}`;
    const server = startCli([
      "server",
      "--port",
      "0",
      "--data-dir",
      tempDir("server-advertise"),
      "--cache-endpoint",
      cacheEndpoint,
    ]);
    try {
      const endpoint = (await server.waitFor(/listening at (http:\/\/\S+)/))[1]!;
      assert.match(server.output(), new RegExp(`object cache \\(told to clients\\): ${cacheEndpoint}`));
      const r = await runCli(["--endpoint", endpoint, "status", "-o", "json"]);
      // The control plane is up; the cache it names is not running, which is exit 3.
      assert.equal(r.code, 3, r.stderr);
      const status = JSON.parse(r.stdout) as {
        controlPlane: { up: boolean };
        cache: { endpoint: string; source: string };
      };
      assert.equal(status.controlPlane.up, true);
      assert.deepEqual([status.cache.endpoint, status.cache.source], [cacheEndpoint, "control-plane"]);
    } finally {
      assert.equal(await server.stop(), 0, server.output());
    }
  });

  it("refuses a malformed cache endpoint as a usage error", async () => {
    const r = await runCli([
      "server",
      "--port",
      "0",
      "--data-dir",
      tempDir("server-bad"),
      "--cache-endpoint",
      "cache:7422",
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /cacheEndpoint: "cache:7422" must start with http:\/\/ or https:\/\//);
  });
});
