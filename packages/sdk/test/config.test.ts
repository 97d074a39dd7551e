import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, DEFAULT_ENDPOINT, ErrorCode, InvalidArgumentError, loadConfig } from "../src/index.js";

let dir: string;
let configPath: string;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-sdk-config-"));
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

describe("loadConfig", () => {
  test("falls back to the default endpoint when nothing is configured and the file is missing", () => {
    const c = loadConfig({ env: {}, configPath: path.join(dir, "absent.yaml") });
    assert.equal(c.endpoint, DEFAULT_ENDPOINT);
    assert.equal(c.source, "default");
    assert.equal(c.token, undefined);
    assert.equal(c.context, undefined);
    assert.equal(c.configFound, false);
  });

  test("uses the current context of the config file", () => {
    const c = loadConfig({ env: {}, configPath });
    assert.deepEqual(c, {
      endpoint: "http://127.0.0.1:7420",
      token: "local-secret",
      context: "local",
      source: "config",
      configPath,
      configFound: true,
    });
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
    const empty = writeConfig("empty.yaml", "");
    assert.equal(loadConfig({ env: {}, configPath: empty }).source, "default");
  });

  test("unknown context names are rejected, naming the field", () => {
    assertInvalid(() => loadConfig({ env: {}, configPath, context: "staging" }), "context", "known: local, prod");
    const dangling = writeConfig("dangling.yaml", "current-context: gone\ncontexts: []\n");
    assertInvalid(() => loadConfig({ env: {}, configPath: dangling }), "current-context", '"gone"');
    assertInvalid(
      () => loadConfig({ env: {}, configPath: path.join(dir, "absent.yaml"), context: "local" }),
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

  test("wrongly shaped documents name the field", () => {
    const cases: [string, string][] = [
      ["- just\n- a list\n", "(root)"],
      ["contexts: {}\n", "contexts"],
      ["contexts:\n  - cluster: { endpoint: http://a:1 }\n", "contexts[0].name"],
      ["contexts:\n  - name: a\n    cluster: [1]\n", "contexts[0].cluster"],
      ["contexts:\n  - name: a\n    cluster: { token: 5 }\n", "contexts[0].cluster.token"],
      ["contexts:\n  - name: a\n  - name: a\n", "contexts[1].name"],
    ];
    cases.forEach(([text, field], i) => {
      const file = writeConfig(`shape-${i}.yaml`, text);
      assertInvalid(() => loadConfig({ env: {}, configPath: file }), field);
    });
  });

  test("bad endpoints from options or env name where they came from", () => {
    const missing = path.join(dir, "absent.yaml");
    assertInvalid(() => loadConfig({ env: {}, configPath: missing, endpoint: "ftp://x:1" }), "endpoint");
    assertInvalid(() => loadConfig({ env: { KILN_ENDPOINT: "not a url" }, configPath: missing }), "KILN_ENDPOINT");
    assertInvalid(
      () => loadConfig({ env: { FLAME_ENDPOINT: "http://x:1/api" }, configPath: missing }),
      "FLAME_ENDPOINT",
    );
  });
});

describe("connect", () => {
  test("is lazy: it succeeds without a server and reports the resolved endpoint", async () => {
    const client = await connect({ endpoint: "http://127.0.0.1:1/", configPath: path.join(dir, "absent.yaml") });
    try {
      assert.equal(client.endpoint, "http://127.0.0.1:1");
    } finally {
      client.close();
    }
  });

  test("rejects a bad endpoint with InvalidArgumentError", async () => {
    await assert.rejects(
      connect({ endpoint: "127.0.0.1:7420", configPath: path.join(dir, "absent.yaml") }),
      (e: unknown) => {
        assert.ok(e instanceof InvalidArgumentError);
        assert.equal(e.field, "endpoint");
        return true;
      },
    );
  });
});
