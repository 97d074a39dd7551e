import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { ErrorCode, KilnClient, ObjectCache, type KilnError } from "@kiln/sdk";
import { create } from "@bufbuild/protobuf";
import { flame } from "@kiln/protocol/proto";
import { startAgent } from "../src/agent/agent.js";
import { serviceEnvironment } from "../src/agent/host-shim.js";
import { startCacheServer, type CacheServer } from "../src/cache/server.js";
import { startControlPlane, type ControlPlane } from "../src/control/server.js";
import { createCertificateAuthority, issueCertificate, serverNames } from "../src/net/local-ca.js";
import { runCli, startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";
import { waitFor } from "./support/processes.js";

/** A CA, a server certificate for this machine, a client certificate, and each written to a PEM file. */
function testPki(dir: string) {
  const ca = createCertificateAuthority("Kiln test CA");
  const server = issueCertificate(ca, { commonName: "kiln", hosts: serverNames("127.0.0.1") });
  const client = issueCertificate(ca, { commonName: "node-1", client: true });
  const write = (name: string, pem: string) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, pem);
    return file;
  };
  return {
    ca,
    server,
    client,
    caFile: write("ca.pem", ca.cert),
    clientCertFile: write("client.pem", client.cert),
    clientKeyFile: write("client-key.pem", client.key),
  };
}

function expectCode(code: string, message: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.equal((err as KilnError).code, code, String(err));
    assert.match((err as Error).message, message);
    return true;
  };
}

describe("TLS: control plane and object cache", () => {
  const dir = tempDir("tls");
  const pki = testPki(dir);
  let cp: ControlPlane;
  let cache: CacheServer;
  before(async () => {
    cp = await startControlPlane({ dataDir: dir, port: 0, tls: pki.server, log: () => {} });
    cache = await startCacheServer({ port: 0, tls: pki.server, storage: { kind: "fs", dir: path.join(dir, "cache") } });
  });
  after(async () => {
    await cp.close();
    await cache.close();
  });

  it("serves https endpoints that a client trusting the CA uses", async () => {
    assert.match(cp.endpoint, /^https:\/\//);
    assert.match(cp.httpEndpoint, /^https:\/\//);
    assert.match(cache.endpoint, /^https:\/\//);
    const client = new KilnClient({ endpoint: cp.endpoint, tls: { ca: pki.ca.cert } });
    try {
      assert.ok((await client.listApplications()).length > 0);
    } finally {
      client.close();
    }
    const objects = new ObjectCache({ endpoint: cache.endpoint, tls: { ca: pki.ca.cert } });
    try {
      const ref = await objects.putObject("app/s1", { n: 1 });
      assert.deepEqual(await objects.getObject(ref), { n: 1 });
    } finally {
      objects.close();
    }
  });

  it("answers /healthz over TLS on both control-plane ports and the cache", async () => {
    const https = await import("node:https");
    const http2 = await import("node:http2");
    const overHttps = (url: string) =>
      new Promise<string>((resolve, reject) => {
        https
          .get(url, { ca: pki.ca.cert }, (res) => {
            let text = "";
            res.on("data", (d: Buffer) => (text += d));
            res.on("end", () => resolve(text));
          })
          .on("error", reject);
      });
    const overH2 = (url: string) =>
      new Promise<string>((resolve, reject) => {
        const session = http2.connect(new URL(url).origin, { ca: pki.ca.cert });
        session.on("error", reject);
        const req = session.request({ ":path": new URL(url).pathname });
        let text = "";
        req.on("data", (d: Buffer) => (text += d));
        req.on("end", () => {
          session.close();
          resolve(text);
        });
        req.on("error", reject);
        req.end();
      });
    assert.equal(JSON.parse(await overH2(`${cp.endpoint}/healthz`)).server, "kiln-control-plane");
    assert.equal(JSON.parse(await overHttps(`${cp.httpEndpoint}/healthz`)).server, "kiln-control-plane");
    assert.equal(JSON.parse(await overHttps(`${cache.endpoint}/healthz`)).server, "kiln-object-cache");
  });

  it("refuses a server certificate from a CA the client was not given, saying what to set", async () => {
    const client = new KilnClient({ endpoint: cp.endpoint, requestTimeoutMs: 10_000 });
    try {
      await assert.rejects(
        client.listApplications(),
        expectCode(ErrorCode.FailedPrecondition, /does not trust .*--tls-ca, KILN_TLS_CA/),
      );
    } finally {
      client.close();
    }
    const objects = new ObjectCache({ endpoint: cache.endpoint });
    try {
      await assert.rejects(objects.listObjects("app"), expectCode(ErrorCode.FailedPrecondition, /does not trust/));
    } finally {
      objects.close();
    }
    const r = await runCli(["--endpoint", cp.endpoint, "list", "-a"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /does not trust .*--tls-ca/);
  });

  it("names TLS when a client speaks plain http:// to a TLS port", async () => {
    const plain = cp.endpoint.replace("https://", "http://");
    const client = new KilnClient({ endpoint: plain, requestTimeoutMs: 10_000 });
    try {
      await assert.rejects(
        client.listApplications(),
        expectCode(ErrorCode.FailedPrecondition, /speaks TLS: use https:\/\/.*KILN_TLS_CA/),
      );
    } finally {
      client.close();
    }
    const r = await runCli(["--endpoint", plain, "list", "-a"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /speaks TLS: use https:\/\//);
    const c = await runCli(["--cache-endpoint", cache.endpoint.replace("https://", "http://"), "cache", "ls", "app"]);
    assert.equal(c.code, 3, c.stderr);
    assert.match(c.stderr, /speaks TLS: use https:\/\//);
  });

  it("uses KILN_TLS_CA and a config context's cluster.tls-ca", async () => {
    const viaEnv = await runCli(["--endpoint", cp.endpoint, "list", "-a"], 30_000, { KILN_TLS_CA: pki.caFile });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    const config = path.join(dir, "config.yaml");
    fs.writeFileSync(
      config,
      `current-context: t\ncontexts:\n  - name: t\n    cluster:\n      endpoint: ${cp.endpoint}\n      tls-ca: ca.pem\n`,
    );
    const viaContext = await runCli(["list", "-a"], 30_000, { KILN_CONFIG: config });
    assert.equal(viaContext.code, 0, viaContext.stderr);
    const missing = await runCli(["--endpoint", cp.endpoint, "--tls-ca", path.join(dir, "nope.pem"), "list", "-a"]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--tls-ca: cannot read .*nope\.pem: ENOENT/);
  });

  it("refuses unusable server files naming the flag", async () => {
    const r = await runCli(["server", "--port", "0", "--data-dir", dir, "--tls-cert", pki.caFile]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--tls-cert needs --tls-key/);
    const notPem = path.join(dir, "not.pem");
    fs.writeFileSync(notPem, "hello");
    const bad = await runCli(["server", "--port", "0", "--data-dir", dir, "--tls-cert", notPem, "--tls-key", notPem]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--tls-cert: .*not\.pem is not a PEM file/);
  });
});

describe("mutual TLS for nodes on a cluster with a token", () => {
  const dir = tempDir("mtls-nodes");
  const pki = testPki(dir);
  const [ADMIN, NODE] = ["admin-token-for-mtls", "node-token-for-mtls"];
  let cp: ControlPlane;
  let cache: CacheServer;
  before(async () => {
    const tls = { ...pki.server, clientCa: pki.ca.cert };
    cp = await startControlPlane({ dataDir: dir, port: 0, token: ADMIN, nodeToken: NODE, tls, log: () => {} });
    const storage = { kind: "fs" as const, dir: path.join(dir, "cache") };
    cache = await startCacheServer({ port: 0, token: ADMIN, nodeToken: NODE, tls, storage });
  });
  after(async () => {
    await cp.close();
    await cache.close();
  });

  it("requires the agent's certificate, and lets clients and services in on their tokens alone", async () => {
    const base = { endpoint: cp.endpoint, token: NODE, executors: 1, log: () => {} };
    const ca = { path: pki.caFile, field: "tlsCa" };
    await assert.rejects(
      startAgent({ ...base, name: "no-cert", workDir: tempDir("mtls-nodes-a"), tls: { ca } }),
      /requires a client certificate signed by its --tls-client-ca for the agent protocol/,
    );
    const agent = await startAgent({
      ...base,
      name: "with-cert",
      workDir: tempDir("mtls-nodes-b"),
      tls: {
        ca,
        cert: { path: pki.clientCertFile, field: "tlsClientCert" },
        key: { path: pki.clientKeyFile, field: "tlsClientKey" },
      },
    });
    try {
      // What a client or a service process does: a token, no certificate.
      const nodes = await runCli(["--endpoint", cp.endpoint, "--tls-ca", pki.caFile, "--token", ADMIN, "list", "-n"]);
      assert.equal(nodes.code, 0, nodes.stderr);
      assert.match(nodes.stdout, /with-cert/);
    } finally {
      await agent.close();
    }
  });

  it("accepts the node token at the cache only with the node's certificate", async () => {
    const admin = new ObjectCache({ endpoint: cache.endpoint, token: ADMIN, tls: { ca: pki.ca.cert } });
    const node = new ObjectCache({ endpoint: cache.endpoint, token: NODE, tls: { ca: pki.ca.cert } });
    const certifiedNode = new ObjectCache({
      endpoint: cache.endpoint,
      token: NODE,
      tls: { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key },
    });
    try {
      const ref = await admin.putObject("app/s1/x", "value");
      await assert.rejects(
        node.getObject(ref),
        expectCode(ErrorCode.Unauthenticated, /refused the token \(this cache requires a client certificate/),
      );
      assert.equal(await certifiedNode.getObject(ref), "value");
    } finally {
      admin.close();
      node.close();
      certifiedNode.close();
    }
  });
});

describe("mutual TLS: the control plane requires client certificates", () => {
  const dir = tempDir("mtls");
  const pki = testPki(dir);
  let cp: ControlPlane;
  const logged: string[] = [];
  before(async () => {
    // Beyond loopback without a token: client certificates are the credential.
    cp = await startControlPlane({
      dataDir: dir,
      host: "0.0.0.0",
      port: 0,
      tls: { ...pki.server, clientCa: pki.ca.cert },
      log: (line) => logged.push(line),
    });
  });
  after(() => cp.close());

  it("refuses an agent without a client certificate, and registers one with it", async () => {
    const base = { endpoint: cp.endpoint, executors: 1, log: () => {} };
    await assert.rejects(
      startAgent({
        ...base,
        name: "no-cert",
        workDir: tempDir("mtls-a"),
        tls: { ca: { path: pki.caFile, field: "tlsCa" } },
      }),
      /refused this agent: .*requires a client certificate/,
    );
    // The operator sees why in the control plane's log.
    await waitFor("the refused handshake in the log", () =>
      logged.find((l) => /refused a TLS connection from .*CERTIFICATE/.test(l)),
    );
    const agent = await startAgent({
      ...base,
      name: "with-cert",
      workDir: tempDir("mtls-b"),
      tls: {
        ca: { path: pki.caFile, field: "tlsCa" },
        cert: { path: pki.clientCertFile, field: "tlsClientCert" },
        key: { path: pki.clientKeyFile, field: "tlsClientKey" },
      },
    });
    try {
      const nodes = await runCli([
        "--endpoint",
        cp.endpoint,
        "--tls-ca",
        pki.caFile,
        "--tls-client-cert",
        pki.clientCertFile,
        "--tls-client-key",
        pki.clientKeyFile,
        "list",
        "-n",
      ]);
      assert.equal(nodes.code, 0, nodes.stderr);
      assert.match(nodes.stdout, /with-cert/);
      const refused = await runCli(["--endpoint", cp.endpoint, "--tls-ca", pki.caFile, "list", "-n"]);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /requires a client certificate/);
    } finally {
      await agent.close();
    }
  });

  it("still refuses to listen beyond loopback with neither a token nor client certificates", async () => {
    await assert.rejects(
      startControlPlane({ dataDir: tempDir("mtls-open"), host: "0.0.0.0", port: 0, tls: pki.server, log: () => {} }),
      /requires a token .* or client certificates \(--tls-client-ca\)/,
    );
  });
});

describe("kiln up --tls", () => {
  const running: CliProcess[] = [];
  after(async () => {
    await Promise.all(running.map((p) => p.stop()));
  });
  const READY = /Kiln is up at (https:\/\/\S+)/;

  it("makes a local CA, keeps it across restarts, writes a context that clients use, and runs Runner work over TLS", async () => {
    const dataDir = tempDir("up-tls");
    const config = path.join(dataDir, "config.yaml");
    fs.writeFileSync(config, "");
    const env = { KILN_CONFIG: config };
    const up = startCli(
      ["up", "--tls", "--data-dir", path.join(dataDir, "data"), "--port", "0", "--executors", "2"],
      env,
    );
    running.push(up);
    await up.waitFor(READY, 60_000);
    await up.waitFor(/config: context kiln-up in .* is current/, 10_000);
    const tlsDir = path.join(dataDir, "data", "tls");
    for (const key of ["ca-key.pem", "server-key.pem"])
      assert.equal(fs.statSync(path.join(tlsDir, key)).mode & 0o777, 0o600, key);
    const fingerprint = new X509Certificate(fs.readFileSync(path.join(tlsDir, "ca.pem"))).fingerprint256;
    const server = new X509Certificate(fs.readFileSync(path.join(tlsDir, "server.pem")));
    for (const ip of ["127.0.0.1", "::1"]) assert.ok(server.checkIP(ip), ip);
    assert.ok(server.checkHost("localhost"));

    // No --endpoint, no --tls-ca: the kiln-up context has both.
    const ping = await runCli(["ping", "-t", "50"], 60_000, env);
    assert.equal(ping.code, 0, ping.stderr);
    assert.match(ping.stdout, /50\/50 tasks succeeded/);
    // Nested Runner calls and ObjectRefs from service processes: they get KILN_TLS_CA from the agent.
    const check = await runCli(["runner-check"], 170_000, env);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.equal(await up.stop(), 0, up.output());

    const again = startCli(
      ["up", "--tls", "--data-dir", path.join(dataDir, "data"), "--port", "0", "--executors", "1"],
      env,
    );
    running.push(again);
    await again.waitFor(READY, 60_000);
    assert.equal(new X509Certificate(fs.readFileSync(path.join(tlsDir, "ca.pem"))).fingerprint256, fingerprint);
    assert.match(again.output(), new RegExp(`SHA-256 ${fingerprint}`));
    const after = await runCli(["list", "-n"], 30_000, env);
    assert.equal(after.code, 0, after.stderr);
    assert.equal(await again.stop(), 0, again.output());
  });
});

describe("kiln server --tls and kiln cache --tls", () => {
  const running: CliProcess[] = [];
  after(async () => {
    await Promise.all(running.map((p) => p.stop()));
  });

  it("make a local CA in their data dirs and serve https that clients trusting it use", async () => {
    const dataDir = tempDir("server-tls");
    const server = startCli(["server", "--tls", "--port", "0", "--data-dir", dataDir]);
    running.push(server);
    const endpoint = (await server.waitFor(/listening at (https:\/\/\S+)/, 30_000))[1]!;
    await server.waitFor(/TLS: clients trust .*ca\.pem/, 10_000);
    const caFile = path.join(dataDir, "tls", "ca.pem");
    const list = await runCli(["--endpoint", endpoint, "--tls-ca", caFile, "list", "-a"]);
    assert.equal(list.code, 0, list.stderr);

    const cacheDir = tempDir("cache-tls");
    const cache = startCli(["cache", "--tls", "--port", "0", "--data-dir", cacheDir]);
    running.push(cache);
    const cacheEndpoint = (await cache.waitFor(/listening at (https:\/\/\S+)/, 30_000))[1]!;
    const file = path.join(cacheDir, "hello.txt");
    fs.writeFileSync(file, "hello over TLS");
    const cacheCa = path.join(cacheDir, "tls", "ca.pem");
    const put = await runCli(["--cache-endpoint", cacheEndpoint, "--tls-ca", cacheCa, "cache", "put", "a/s/x", file]);
    assert.equal(put.code, 0, put.stderr);
    const get = await runCli(["--cache-endpoint", cacheEndpoint, "--tls-ca", cacheCa, "cache", "get", "a/s/x"]);
    assert.equal(get.stdout, "hello over TLS");
    assert.equal(await server.stop(), 0, server.output());
    assert.equal(await cache.stop(), 0, cache.output());
  });
});

describe("service processes under TLS", () => {
  it("get the agent's CA file as KILN_TLS_CA, and never its client certificate", () => {
    const saved = { cert: process.env.KILN_TLS_CLIENT_CERT, key: process.env.KILN_TLS_CLIENT_KEY };
    process.env.KILN_TLS_CLIENT_CERT = "/agent/client.pem";
    process.env.KILN_TLS_CLIENT_KEY = "/agent/client-key.pem";
    try {
      const env = serviceEnvironment({
        executorId: "e1",
        sessionId: "s1",
        application: create(flame.ApplicationSpecSchema, { command: "true" }),
        controlPlaneEndpoint: "https://127.0.0.1:7420",
        cacheEndpoint: "https://127.0.0.1:7422",
        tlsCaFile: "/data/tls/ca.pem",
        taskCredential: "",
        socketPath: "/tmp/x.sock",
        tempDir: "/tmp",
        logDir: "/tmp",
        socketTimeoutMs: 1000,
      });
      assert.equal(env.KILN_TLS_CA, "/data/tls/ca.pem");
      assert.equal(env.KILN_TLS_CLIENT_CERT, undefined);
      assert.equal(env.KILN_TLS_CLIENT_KEY, undefined);
    } finally {
      for (const [name, value] of [
        ["KILN_TLS_CLIENT_CERT", saved.cert],
        ["KILN_TLS_CLIENT_KEY", saved.key],
      ] as const)
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
    }
  });
});
