import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as net from "node:net";
import { after, describe, it } from "node:test";
import { runCli, startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";
import { holdPorts, isAlive, processesWithEnv, waitFor } from "./support/processes.js";

const READY = /Kiln is up at (http:\/\/\S+)/;

/** `kiln up` on a fresh data dir (or `dataDir`) on ports the kernel picks, with `env` added. */
function startUp(dataDir: string, env: NodeJS.ProcessEnv = {}, extra: string[] = []): CliProcess {
  return startCli(["up", "--data-dir", dataDir, "--port", "0", "--executors", "1", ...extra], env);
}

describe("kill -9 of kiln up", () => {
  const running: CliProcess[] = [];
  after(async () => {
    await Promise.all(running.map((p) => p.stop()));
  });

  it("takes its cache, its agent and their service processes with it; the next kiln up has the node to itself", async () => {
    const mark = `kiln-up-kill-test-${randomUUID()}`;
    const dataDir = tempDir("up-kill");
    const up = startUp(dataDir, { KILN_TEST_MARK: mark });
    running.push(up);
    const endpoint = (await up.waitFor(READY, 40_000))[1]!;
    // A task that runs until it is stopped, so the agent has a service process too.
    const ping = startCli(["--endpoint", endpoint, "ping", "-t", "1", "-d", "600000"]);
    running.push(ping);
    const children = await waitFor("the cache, the agent and a service process", () => {
      const found = processesWithEnv(mark).filter((pid) => pid !== up.child.pid && pid !== ping.child.pid);
      return found.length >= 3 ? found : undefined;
    });

    up.child.kill("SIGKILL");
    assert.equal(await up.exited(), null);
    for (const pid of children)
      await waitFor(`process ${pid} (a child of the killed kiln up) to exit`, () => !isAlive(pid) || undefined, 60_000);

    const again = startUp(dataDir);
    running.push(again);
    const second = (await again.waitFor(READY, 40_000))[1]!;
    const nodes = await runCli(["--endpoint", second, "list", "-n"]);
    assert.equal(nodes.code, 0, nodes.stderr);
    const rows = nodes.stdout.trim().split("\n").slice(1);
    assert.equal(rows.length, 1, nodes.stdout);
    assert.match(rows[0]!, /\sReady\s/);
    assert.equal(await again.stop(), 0, again.output());
  });
});

describe("a busy port fails at once and names the flag to change", () => {
  // Three ports held: each case frees the ones the command should get and keeps the busy one.
  const cases: { what: string; busy: number; args: (first: number) => string[]; message: RegExp }[] = [
    {
      what: "kiln up: --port",
      busy: 0,
      args: (p) => ["up", "--port", String(p), "--cache-port", String(p + 2)],
      message: /port \d+ \(the control plane's gRPC\/HTTP2 port\) is already in use .*Choose another with --port$/m,
    },
    {
      what: "kiln up: the JSON port (--port + 1)",
      busy: 1,
      args: (p) => ["up", "--port", String(p), "--cache-port", String(p + 2)],
      message:
        /port \d+ \(the control plane's JSON\/HTTP1\.1 port\) is already in use .*--port \(the JSON port is --port \+ 1\)$/m,
    },
    {
      what: "kiln up: --cache-port",
      busy: 2,
      args: (p) => ["up", "--port", String(p), "--cache-port", String(p + 2)],
      message: /port \d+ \(the object cache's port\) is already in use .*Choose another with --cache-port$/m,
    },
    {
      what: "kiln server: --port",
      busy: 0,
      args: (p) => ["server", "--port", String(p)],
      message: /cannot start the control plane: port \d+ \(the control plane's gRPC\/HTTP2 port\).*--port$/m,
    },
    {
      what: "kiln server: the JSON port",
      busy: 1,
      args: (p) => ["server", "--port", String(p)],
      message: /cannot start the control plane: port \d+ \(the control plane's JSON\/HTTP1\.1 port\).*--port \+ 1\)$/m,
    },
    {
      what: "kiln cache: --port",
      busy: 2,
      args: (p) => ["cache", "--port", String(p + 2)],
      message: /cannot start the object cache: port \d+ \(the object cache's port\).*Choose another with --port$/m,
    },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      const ports = await holdPorts(3);
      const dataDir = tempDir("busy-port");
      try {
        for (let i = 0; i < 3; i++) if (i !== c.busy) await ports.free(ports.first + i);
        const r = await runCli([...c.args(ports.first), "--data-dir", dataDir], 60_000);
        assert.equal(r.code, 1, r.stdout + r.stderr);
        assert.match(r.stderr, c.message);
        assert.match(r.stderr, new RegExp(`port ${ports.first + c.busy} `));
        // Nothing it started stays behind to hold the other ports.
        for (let i = 0; i < 3; i++) {
          if (i === c.busy) continue;
          const probe = net.createServer();
          await new Promise<void>((resolve, reject) => {
            probe.once("error", reject);
            probe.listen(ports.first + i, "127.0.0.1", resolve);
          });
          await new Promise((resolve) => probe.close(resolve));
        }
      } finally {
        await ports.close();
      }
    });
  }
});

describe("kiln up prints hints that reach it", () => {
  it("on a port other than the default, the hints carry --endpoint", async () => {
    const up = startUp(tempDir("up-hint"));
    try {
      const endpoint = (await up.waitFor(READY, 40_000))[1]!;
      const hint = (await up.waitFor(/Try `([^`]+)`/))[1]!;
      assert.equal(hint, `kiln --endpoint ${endpoint} ping`);
      const r = await runCli([...hint.split(" ").slice(1), "-t", "1"], 60_000);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      assert.equal(await up.stop(), 0, up.output());
    }
  });
});
