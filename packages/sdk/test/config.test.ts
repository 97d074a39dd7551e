import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  connect,
  DEFAULT_ENDPOINT,
  ErrorCode,
  InvalidArgumentError,
  loadCacheConfig,
  loadConfig,
} from "../src/index.js";

let dir: string;
let configPath: string;
/** A config file with no contexts: keeps the user's own ~/.kiln/config.yaml out of a test. */
let emptyConfig: string;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-sdk-config-"));
  emptyConfig = path.join(dir, "empty.yaml");
  fs.writeFileSync(emptyConfig, "");
  configPath = path.join(dir, "config.yaml");
  fs.writeFileSync(
    configPath,
    [
      "current-context: local",
      "contexts:",
      "  - name: local",
      '    cluster: { endpoint: "http://127.0.0.1:7420", token: "local-secret" }',
      "  - name: prod",
      "    cluster:",
      "      endpoint: https://kiln.example.com:8443/",
      "      token: prod-secret",
      "",
    ].join("\n"),
  );
});

after(() => fs.rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, text: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

function assertInvalid(fn: () => unknown, field: string, messagePart?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(e)}`);
    assert.equal(e.code, ErrorCode.InvalidArgument);
    assert.equal(e.field, field);
    if (messagePart) assert.ok(e.message.includes(messagePart), e.message);
    return true;
  });
}

/** Runs `fn` with HOME (where the default ~/.kiln/config.yaml is looked for) set to `home`. */
function withHome<T>(home: string, fn: () => T): T {
  const saved = process.env.HOME;
  process.env.HOME = home;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env.HOME;
    else process.env.HOME = saved;
  }
}

describe("loadConfig", () => {
  test("falls back to the default endpoint when nothing is configured and ~/.kiln/config.yaml is missing", () => {
    const c = withHome(path.join(dir, "no-home"), () => loadConfig({ env: {} }));
    assert.equal(c.endpoint, DEFAULT_ENDPOINT);
    assert.equal(c.source, "default");
    assert.equal(c.token, undefined);
    assert.equal(c.context, undefined);
    assert.equal(c.configPath, path.join(dir, "no-home", ".kiln", "config.yaml"));
    assert.equal(c.configFound, false);
  });

  test("reads ~/.kiln/config.yaml when no file is named", () => {
    const home = path.join(dir, "home");
    fs.mkdirSync(path.join(home, ".kiln"), { recursive: true });
    fs.copyFileSync(configPath, path.join(home, ".kiln", "config.yaml"));
    const c = withHome(home, () => loadConfig({ env: {} }));
    assert.equal(c.context, "local");
    assert.equal(c.configFound, true);
  });

  test("a named config file that does not exist is an error naming the path and where it was named", () => {
    const absent = path.join(dir, "absent.yaml");
    assertInvalid(() => loadConfig({ env: {}, configPath: absent }), "configPath", `no config file at ${absent}`);
    assertInvalid(() => loadConfig({ env: { KILN_CONFIG: absent } }), "KILN_CONFIG", absent);
    assertInvalid(
      () => loadCacheConfig({ env: {}, configPath: absent, cacheEndpoint: "http://127.0.0.1:7422" }),
      "configPath",
      absent,
    );
  });

  test("uses the current context of the config file", () => {
    const c = loadConfig({ env: {}, configPath });
    assert.deepEqual(c, {
      endpoint: "http://127.0.0.1:7420",
      token: "local-secret",
      context: "local",
      source: "config",
      tls: {},
      configPath,
      configFound: true,
    });
  });

  test("TLS files: options, then KILN_TLS_*, then the context (relative to the config file); a certificate needs its key", () => {
    const secure = writeConfig(
      "secure.yaml",
      "current-context: s\ncontexts:\n  - name: s\n    cluster:\n      endpoint: https://10.0.0.1:7420\n" +
        "      tls-ca: certs/ca.pem\n      tls-client-cert: me.pem\n      tls-client-key: me-key.pem\n",
    );
    const dir = path.dirname(secure);
    const fromContext = loadConfig({ env: {}, configPath: secure });
    assert.deepEqual(fromContext.tls, {
      ca: { path: path.join(dir, "certs", "ca.pem"), field: "contexts[0].cluster.tls-ca" },
      cert: { path: path.join(dir, "me.pem"), field: "contexts[0].cluster.tls-client-cert" },
      key: { path: path.join(dir, "me-key.pem"), field: "contexts[0].cluster.tls-client-key" },
    });
    // Another endpoint keeps the context's CA (trust) but not its client certificate (a credential).
    const elsewhere = loadConfig({ env: {}, configPath: secure, endpoint: "https://10.0.0.9:7420" });
    assert.deepEqual(Object.keys(elsewhere.tls), ["ca"]);
    const fromEnv = loadConfig({ env: { KILN_TLS_CA: "/etc/ca.pem" }, configPath: secure });
    assert.deepEqual(fromEnv.tls.ca, { path: "/etc/ca.pem", field: "KILN_TLS_CA" });
    const fromOptions = loadConfig({ env: { KILN_TLS_CA: "/etc/ca.pem" }, configPath: secure, tlsCa: "/x.pem" });
    assert.deepEqual(fromOptions.tls.ca, { path: "/x.pem", field: "tlsCa" });
    assert.throws(
      () => loadConfig({ env: {}, configPath, tlsClientCert: "/me.pem" }),
      (e: InvalidArgumentError) => e.field === "tlsClientCert" && /tlsClientKey is not set/.test(e.message),
    );
  });

  test("a named context overrides current-context, and its endpoint is normalized", () => {
    const c = loadConfig({ env: {}, configPath, context: "prod" });
    assert.equal(c.endpoint, "https://kiln.example.com:8443");
    assert.equal(c.token, "prod-secret");
    assert.equal(c.context, "prod");
  });

  test("KILN_CONFIG names the file when no configPath is given; configPath wins over it", () => {
    const other = writeConfig(
      "other.yaml",
      "current-context: x\ncontexts:\n  - name: x\n    cluster: { endpoint: http://10.0.0.1:1 }\n",
    );
    assert.equal(loadConfig({ env: { KILN_CONFIG: other } }).endpoint, "http://10.0.0.1:1");
    assert.equal(loadConfig({ env: { KILN_CONFIG: other }, configPath }).endpoint, "http://127.0.0.1:7420");
  });

  test("env beats the file: KILN_ENDPOINT, else FLAME_ENDPOINT; KILN_TOKEN", () => {
    const flameOnly = loadConfig({ env: { FLAME_ENDPOINT: "http://flame:8080" }, configPath });
    assert.equal(flameOnly.endpoint, "http://flame:8080");
    assert.equal(flameOnly.source, "env");
    const both = loadConfig({
      env: { FLAME_ENDPOINT: "http://flame:8080", KILN_ENDPOINT: "http://kiln:7420", KILN_TOKEN: "env-secret" },
      configPath,
    });
    assert.equal(both.endpoint, "http://kiln:7420");
    assert.equal(both.token, "env-secret");
  });

  test("explicit options beat env and file", () => {
    const c = loadConfig({
      env: { KILN_ENDPOINT: "http://kiln:7420", KILN_TOKEN: "env-secret" },
      configPath,
      endpoint: "http://127.0.0.2:9000",
      token: "option-secret",
    });
    assert.equal(c.endpoint, "http://127.0.0.2:9000");
    assert.equal(c.token, "option-secret");
    assert.equal(c.source, "options");
  });

  test("a context's token is not sent to an endpoint that came from elsewhere", () => {
    const c = loadConfig({ env: { KILN_ENDPOINT: "http://elsewhere:7420" }, configPath });
    assert.equal(c.endpoint, "http://elsewhere:7420");
    assert.equal(c.token, undefined);
    // The same server named another way still gets it.
    const same = loadConfig({ env: {}, configPath, endpoint: "http://127.0.0.1:7420/" });
    assert.equal(same.token, "local-secret");
  });

  test("an empty file is fine", () => {
    assert.equal(loadConfig({ env: {}, configPath: emptyConfig }).source, "default");
  });

  test("unknown context names are rejected, naming the field", () => {
    assertInvalid(() => loadConfig({ env: {}, configPath, context: "staging" }), "context", "known: local, prod");
    const dangling = writeConfig("dangling.yaml", "current-context: gone\ncontexts: []\n");
    assertInvalid(() => loadConfig({ env: {}, configPath: dangling }), "current-context", '"gone"');
    assertInvalid(
      () => withHome(path.join(dir, "no-home"), () => loadConfig({ env: {}, context: "local" })),
      "context",
      "no config file",
    );
  });

  test("malformed YAML is rejected, naming the file", () => {
    const bad = writeConfig("bad.yaml", "contexts: [\n  - name: x\n");
    assertInvalid(() => loadConfig({ env: {}, configPath: bad }), bad, "not valid YAML");
  });

  test("a bad endpoint in the file names its path in the document", () => {
    const bad = writeConfig(
      "bad-endpoint.yaml",
      "current-context: a\ncontexts:\n  - name: a\n    cluster: { endpoint: 'localhost:7420' }\n",
    );
    assertInvalid(() => loadConfig({ env: {}, configPath: bad }), "contexts[0].cluster.endpoint", bad);
  });

  test("a wrongly shaped file names the field and fails every command", () => {
    const cases: [string, string][] = [
      ["- just\n- a list\n", "(root)"],
      ["contexts: {}\n", "contexts"],
      ["current-context: [a]\ncontexts: []\n", "current-context"],
    ];
    cases.forEach(([text, field], i) => {
      const file = writeConfig(`root-${i}.yaml`, text);
      assertInvalid(() => loadConfig({ env: {}, configPath: file, endpoint: "http://127.0.0.1:1" }), field);
    });
  });

  test("a malformed context fails only what uses it, naming its field", () => {
    const file = writeConfig(
      "one-bad.yaml",
      [
        "current-context: listy",
        "contexts:",
        "  - name: good",
        "    cluster: { endpoint: http://10.0.0.1:7420, token: good-secret }",
        "  - name: listy",
        "    cluster: [1]",
        "  - name: numeric-token",
        "    cluster: { token: 5 }",
        "  - name: twice",
        "  - name: twice",
        "  - cluster: { endpoint: http://a:1 }",
        "",
      ].join("\n"),
    );
    const load = (o: { context?: string; endpoint?: string; env?: Record<string, string> } = {}) =>
      loadConfig({ env: o.env ?? {}, configPath: file, ...o });
    // The broken current context is what a plain call uses: it fails, naming the field.
    assertInvalid(() => load(), "contexts[1].cluster", file);
    assertInvalid(() => loadCacheConfig({ env: {}, configPath: file }), "contexts[1].cluster");
    // Another context works.
    assert.deepEqual(
      [load({ context: "good" }).endpoint, load({ context: "good" }).token],
      ["http://10.0.0.1:7420", "good-secret"],
    );
    // An endpoint given explicitly does not use the current context, so that works too.
    const explicit = load({ endpoint: "http://127.0.0.1:9000" });
    assert.deepEqual(
      [explicit.endpoint, explicit.token, explicit.context],
      ["http://127.0.0.1:9000", undefined, undefined],
    );
    assert.equal(load({ env: { KILN_ENDPOINT: "http://127.0.0.1:9000" } }).endpoint, "http://127.0.0.1:9000");
    // Naming a broken context is still an error, even with an endpoint.
    assertInvalid(() => load({ context: "listy", endpoint: "http://127.0.0.1:9000" }), "contexts[1].cluster");
    assertInvalid(() => load({ context: "numeric-token" }), "contexts[2].cluster.token");
    assertInvalid(() => load({ context: "twice" }), "contexts[4].name", "given twice");
    // A context without a name cannot be chosen; an unknown name says what is wrong with it.
    assertInvalid(() => load({ context: "other" }), "context", "contexts[5].name: is required");
  });

  test("a bad endpoint fails only what connects to it: a Flame config's grpcs:// cache still reaches the cluster", () => {
    const file = writeConfig(
      "flame-style.yaml",
      [
        "current-context: flame",
        "contexts:",
        "  - name: flame",
        "    cluster: { endpoint: 'http://10.0.0.2:8080', tls: { ca_file: /etc/flame/ca.crt } }",
        "    cache: { endpoint: 'grpcs://flame-object-cache:9090' }",
        "  - name: bad-cluster",
        "    cluster: { endpoint: 'localhost:7420' }",
        "    cache: { endpoint: 'http://10.0.0.3:7422' }",
        "",
      ].join("\n"),
    );
    assert.equal(loadConfig({ env: {}, configPath: file }).endpoint, "http://10.0.0.2:8080");
    assertInvalid(() => loadCacheConfig({ env: {}, configPath: file }), "contexts[0].cache.endpoint", "grpcs://");
    assert.equal(
      loadCacheConfig({ env: {}, configPath: file, cacheEndpoint: "http://127.0.0.1:7422" }).cacheEndpoint,
      "http://127.0.0.1:7422",
    );
    assertInvalid(
      () => loadConfig({ env: {}, configPath: file, context: "bad-cluster" }),
      "contexts[1].cluster.endpoint",
    );
    assert.equal(
      loadCacheConfig({ env: {}, configPath: file, context: "bad-cluster" }).cacheEndpoint,
      "http://10.0.0.3:7422",
    );
  });

  test("bad endpoints from options or env name where they came from", () => {
    const empty = emptyConfig;
    assertInvalid(() => loadConfig({ env: {}, configPath: empty, endpoint: "ftp://x:1" }), "endpoint");
    assertInvalid(() => loadConfig({ env: { KILN_ENDPOINT: "not a url" }, configPath: empty }), "KILN_ENDPOINT");
    assertInvalid(() => loadConfig({ env: { FLAME_ENDPOINT: "http://x:1/api" }, configPath: empty }), "FLAME_ENDPOINT");
  });
});

describe("connect", () => {
  test("is lazy: it succeeds without a server and reports the resolved endpoint", async () => {
    const client = await connect({ endpoint: "http://127.0.0.1:1/", configPath: emptyConfig });
    try {
      assert.equal(client.endpoint, "http://127.0.0.1:1");
    } finally {
      client.close();
    }
  });

  test("rejects a bad endpoint with InvalidArgumentError", async () => {
    await assert.rejects(connect({ endpoint: "127.0.0.1:7420", configPath: emptyConfig }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.equal(e.field, "endpoint");
      return true;
    });
  });
});
