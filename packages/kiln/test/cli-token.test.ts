import { connect, ObjectCache } from "@kiln/sdk";
import { ErrorCode, UnauthenticatedError } from "@kiln/protocol";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { CLI, CLI_ENV, runCli, startCli, type CliProcess } from "./cli-helpers.js";

const TOKEN = "s3cret-token";
const HINT = "refused the token (missing or invalid): pass --token or set KILN_TOKEN (or the config context's token)";

describe("a cluster that requires a token (kiln up --token)", () => {
  let dir: string;
  let up: CliProcess | undefined;
  let endpoint: string;
  let cacheEndpoint: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "kiln-cli-token-"));
    up = startCli(["up", "--data-dir", path.join(dir, "data"), "--port", "0", "--executors", "1", "--token", TOKEN]);
    const m = await up.waitFor(/Kiln is up at (http:\/\/\S+)\n\s+object cache: (http:\/\/\S+)/, 40_000);
    endpoint = m[1]!;
    cacheEndpoint = m[2]!;
  });

  after(async () => {
    try {
      if (up) assert.equal(await up.stop(), 0, up.output());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("without a token or with a wrong one, the CLI names the cluster, --token and KILN_TOKEN (exit 1)", async () => {
    for (const extra of [[], ["--token", "wrong"]]) {
      const r = await runCli(["list", "-s", "--endpoint", endpoint, ...extra]);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stderr, `error: the cluster at ${endpoint} ${HINT} (UNAUTHENTICATED)\n`);
    }
  });

  it("a command that uses both names the one that refused: kiln data's cluster call", async () => {
    const r = await runCli(["data", "s-1", "--endpoint", endpoint, "--cache-endpoint", cacheEndpoint]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr, `error: the cluster at ${endpoint} ${HINT} (UNAUTHENTICATED)\n`);
  });

  it("the object cache's refusal names the object cache (kiln cache, kiln deploy)", async () => {
    const ls = await runCli(["cache", "ls", "demo", "--cache-endpoint", cacheEndpoint]);
    assert.equal(ls.code, 1, ls.stderr);
    assert.equal(ls.stderr, `error: the object cache at ${cacheEndpoint} ${HINT} (UNAUTHENTICATED)\n`);

    const exe = path.join(dir, "service.sh");
    await writeFile(exe, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    const deploy = await runCli([
      "deploy",
      exe,
      "--name",
      "tok",
      "--endpoint",
      endpoint,
      "--cache-endpoint",
      cacheEndpoint,
    ]);
    assert.equal(deploy.code, 1, deploy.stderr);
    assert.equal(deploy.stderr, `error: the object cache at ${cacheEndpoint} ${HINT} (UNAUTHENTICATED)\n`);
  });

  it("works with --token, with KILN_TOKEN, and with the config context's token", async () => {
    const flag = await runCli(["list", "-s", "--endpoint", endpoint, "--token", TOKEN]);
    assert.equal(flag.code, 0, flag.stderr);
    const cache = await runCli(["cache", "ls", "demo", "--cache-endpoint", cacheEndpoint, "--token", TOKEN]);
    assert.equal(cache.code, 0, cache.stderr);

    const env = spawnSync(process.execPath, [CLI, "list", "-a", "--endpoint", endpoint], {
      env: { ...CLI_ENV, KILN_TOKEN: TOKEN },
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(env.status, 0, env.stderr);
    assert.match(env.stdout, /^kiln-ping\s/m);

    const config = path.join(dir, "config.yaml");
    await writeFile(
      config,
      `current-context: local\ncontexts:\n  - name: local\n    cluster: { endpoint: ${endpoint}, token: ${TOKEN} }\n`,
    );
    const context = await runCli(["list", "-a", "--config", config]);
    assert.equal(context.code, 0, context.stderr);
  });

  it("the SDK's error names the server and where a token comes from", async () => {
    const client = await connect({ endpoint, configPath: "/dev/null" });
    try {
      await assert.rejects(client.listSessions(), (e: unknown) => {
        assert.ok(e instanceof UnauthenticatedError, String(e));
        assert.equal(e.code, ErrorCode.Unauthenticated);
        assert.match(e.message, new RegExp(`^the cluster at ${endpoint} refused the token \\(missing or invalid\\): `));
        assert.match(e.message, /KILN_TOKEN/);
        return true;
      });
    } finally {
      client.close();
    }
    const cache = new ObjectCache({ endpoint: cacheEndpoint });
    try {
      await assert.rejects(cache.listObjects("demo"), (e: unknown) => {
        assert.ok(e instanceof UnauthenticatedError, String(e));
        assert.match(e.message, new RegExp(`^the object cache at ${cacheEndpoint} refused the token .*KILN_TOKEN`));
        return true;
      });
    } finally {
      cache.close();
    }
  });
});
