import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { closedPort, runCli, startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";

// One `kiln up` on ports the kernel picks (never the defaults) for the whole file.
describe("a cluster on non-default ports: status, the advertised cache, and clients at the wrong port", () => {
  let up: CliProcess;
  let endpoint: string;
  let jsonEndpoint: string;
  let cacheEndpoint: string;
  const kiln = (...args: string[]) => runCli(["--endpoint", endpoint, ...args], 60_000);

  before(async () => {
    up = startCli(["up", "--data-dir", tempDir("endpoints"), "--port", "0", "--executors", "2"]);
    endpoint = (await up.waitFor(/Kiln is up at (http:\/\/\S+)/, 40_000))[1]!;
    jsonEndpoint = (await up.waitFor(/and (http:\/\/\S+) \(JSON\/HTTP1\.1\)/))[1]!;
    cacheEndpoint = (await up.waitFor(/object cache: (http:\/\/\S+)/))[1]!;
    assert.notEqual(endpoint, "http://127.0.0.1:7420");
  });
  after(async () => {
    assert.equal(await up.stop(), 0, up.output());
  });

  it("kiln status shows the control plane, its counts and the cache it advertises; -o json too", async () => {
    const table = await kiln("status");
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, new RegExp(`^Control plane: +${endpoint} \\(up, kiln \\d+\\.\\d+\\.\\d+\\)$`, "m"));
    assert.match(table.stdout, /^Nodes: +1 \(1 ready\)$/m);
    assert.match(table.stdout, /^Executors: +\d+$/m);
    assert.match(table.stdout, /^Sessions: +\d+ open$/m);
    assert.match(
      table.stdout,
      new RegExp(`^Object cache: +${cacheEndpoint} \\(healthy, fs backend; advertised by the control plane\\)$`, "m"),
    );

    const json = await kiln("status", "-o", "json");
    assert.equal(json.code, 0, json.stderr);
    const status = JSON.parse(json.stdout) as Record<string, Record<string, unknown>>;
    assert.equal(status.controlPlane!.up, true);
    assert.equal(status.controlPlane!.endpoint, endpoint);
    assert.deepEqual(status.nodes, { total: 1, ready: 1 });
    assert.equal(typeof status.executors, "number");
    assert.equal(typeof status.sessions!.open, "number");
    assert.deepEqual(status.cache, { endpoint: cacheEndpoint, source: "control-plane", healthy: true, backend: "fs" });
  });

  it("kiln status counts an open session", async () => {
    const created = await kiln("create", "-a", "kiln-ping");
    assert.equal(created.code, 0, created.stderr);
    const id = /Session (\S+) was created/.exec(created.stdout)![1]!;
    try {
      const json = await kiln("status", "-o", "json");
      assert.ok((JSON.parse(json.stdout) as { sessions: { open: number } }).sessions.open >= 1, json.stdout);
    } finally {
      await kiln("close", "-s", id);
    }
  });

  it("kiln status exits 3 when the control plane cannot be reached, and says so in JSON", async () => {
    const nowhere = `http://127.0.0.1:${await closedPort()}`;
    const r = await runCli(["--endpoint", nowhere, "--cache-endpoint", cacheEndpoint, "status", "-o", "json"]);
    assert.equal(r.code, 3, r.stderr);
    const status = JSON.parse(r.stdout) as {
      controlPlane: { up: boolean; error: string };
      cache: { healthy: boolean };
    };
    assert.equal(status.controlPlane.up, false);
    assert.match(status.controlPlane.error, /ECONNREFUSED/);
    assert.equal(status.cache.healthy, true);
    assert.match(r.stderr, new RegExp(`cannot reach the Kiln cluster at ${nowhere}.*\\(UNAVAILABLE\\)`));
  });

  it("kiln status exits 3 when the cache cannot be reached, naming it", async () => {
    const nowhere = `http://127.0.0.1:${await closedPort()}`;
    const r = await kiln("--cache-endpoint", nowhere, "status");
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /^Control plane: .*\(up, /m);
    assert.match(
      r.stdout,
      new RegExp(`^Object cache: +${nowhere} \\(unreachable: .*ECONNREFUSED.*; from --cache-endpoint\\)$`, "m"),
    );
    assert.match(r.stderr, new RegExp(`cannot reach the object cache at ${nowhere}`));
  });

  it("KILN_ENDPOINT alone is enough for kiln runner-check: the cache comes from the control plane", async () => {
    const r = await runCli(["runner-check"], 170_000, { KILN_ENDPOINT: endpoint });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /Runner check passed\./);
  });

  it("kiln cache uses the advertised cache; an explicit --cache-endpoint or KILN_CACHE_ENDPOINT still wins", async () => {
    const file = path.join(tempDir("endpoints-file"), "x.txt");
    fs.writeFileSync(file, "hello");
    const put = await runCli(["cache", "put", "endpoints/s1/x", file], 30_000, { KILN_ENDPOINT: endpoint });
    assert.equal(put.code, 0, put.stderr);
    const ls = await kiln("cache", "ls", "endpoints");
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /^endpoints\/s1\/x\s/m);

    const nowhere = `http://127.0.0.1:${await closedPort()}`;
    for (const r of [
      await kiln("--cache-endpoint", nowhere, "cache", "ls", "endpoints"),
      await runCli(["cache", "ls", "endpoints"], 30_000, { KILN_ENDPOINT: endpoint, KILN_CACHE_ENDPOINT: nowhere }),
    ]) {
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, new RegExp(`cannot reach the object cache at ${nowhere}`));
    }
    assert.equal((await kiln("cache", "rm", "endpoints/*")).code, 0);
  });

  it("kiln exec sends a large input through the advertised cache, from KILN_ENDPOINT alone", async () => {
    const big = path.join(tempDir("endpoints-exec"), "big.bin");
    fs.writeFileSync(big, Buffer.alloc(300 * 1024, 7)); // over the 256 KiB that travel inside the task
    const r = await runCli(["exec", "--input", big, "--", "sh", "-c", "wc -c < big.bin"], 60_000, {
      KILN_ENDPOINT: endpoint,
    });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.stdout.trim(), String(300 * 1024));
  });

  it("a client at the object cache's port is told what is there", async () => {
    const r = await runCli(["--endpoint", cacheEndpoint, "list", "-s"]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(
      r.stderr,
      /: port \d+ is Kiln's object cache, not the control plane; the control plane is usually at http:\/\/127\.0\.0\.1:\d+ \(--endpoint\)\. \(UNAVAILABLE\)$/m,
    );
    assert.doesNotMatch(r.stderr, /Protocol error/);
  });

  it("a client at the control plane's JSON port is told the gRPC endpoint", async () => {
    const r = await runCli(["--endpoint", jsonEndpoint, "list", "-s"]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, new RegExp(`JSON/HTTP1\\.1 port; clients use its gRPC port, ${endpoint} \\(--endpoint\\)`));
  });

  it("https:// at the control plane's plain port says it does not speak TLS, and what to try", async () => {
    const https = endpoint.replace("http://", "https://");
    const r = await runCli(["--endpoint", https, "list", "-s"]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`does not speak TLS \\(it is Kiln's control plane, in plain HTTP\\); try ${endpoint}`),
    );
    assert.doesNotMatch(r.stderr, /SSL routines/);
  });

  it("the cache client at either control plane port is sent to the advertised cache", async () => {
    for (const wrong of [endpoint, jsonEndpoint]) {
      const r = await runCli(["--cache-endpoint", wrong, "cache", "ls", "endpoints"]);
      assert.equal(r.code, 3, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `is Kiln's control plane.*, not the object cache; the object cache is at ${cacheEndpoint} \\(--cache-endpoint\\)`,
        ),
      );
    }
  });

  it("https:// at the cache's plain port says it does not speak TLS", async () => {
    const r = await runCli(["--cache-endpoint", cacheEndpoint.replace("http://", "https://"), "cache", "ls", "x"]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`does not speak TLS \\(it is Kiln's object cache, in plain HTTP\\); try ${cacheEndpoint}`),
    );
  });

  it("a second agent with the name of the connected node is refused (exit 1), and the first keeps it", async () => {
    const node = (await kiln("list", "-n")).stdout.split("\n")[1]!.split(/\s+/)[0]!;
    const agent = await runCli(
      ["agent", "--endpoint", endpoint, "--name", node, "--work-dir", tempDir("second-agent"), "--executors", "1"],
      30_000,
    );
    assert.equal(agent.code, 1, agent.stdout + agent.stderr);
    assert.match(
      agent.stderr,
      new RegExp(
        `refused this agent: node "${node}" is already connected: another agent \\(pid \\d+ .*holds that name.*--name`,
      ),
    );
    const ping = await kiln("ping", "-t", "3");
    assert.equal(ping.code, 0, ping.stderr);
    assert.match(up.output(), /refused an agent \(pid \d+\): node/);
    assert.doesNotMatch(up.output(), new RegExp(`node ${node} disconnected`));
  });
});
