import { create } from "@bufbuild/protobuf";
import { ConnectError, createClient, Code } from "@connectrpc/connect";
import { createClusterTransport } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startAgent } from "../src/agent/agent.js";
import { startTestControlPlane, tempDir, type TestControlPlane } from "./support/control-plane.js";
import { waitFor } from "./support/processes.js";

const HEARTBEAT_MS = 300;

/**
 * An agent's stream driven by hand: registers `name` as `instanceId`, then
 * heartbeats, or (`silent`) sends nothing, so the control plane sees it fall
 * silent as it would a half-open stream, until `close()`.
 */
function rawAgent(endpoint: string, name: string, instanceId: string, silent = false) {
  const connection = createClusterTransport({ endpoint });
  let end!: () => void;
  const ended = new Promise<void>((resolve) => (end = resolve));
  async function* requests(): AsyncGenerator<kiln.AgentMessage> {
    yield create(kiln.AgentMessageSchema, {
      kind: {
        case: "register",
        value: { node: { name, hostname: "raw-host", maxExecutors: 1 }, instanceId, pid: 4242 },
      },
    });
    let closed = false;
    void ended.then(() => (closed = true));
    while (!closed) {
      if (!silent) yield create(kiln.AgentMessageSchema, { kind: { case: "heartbeat", value: { time: 0n } } });
      await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, HEARTBEAT_MS / 3))]);
    }
  }
  const received: kiln.ControlMessage[] = [];
  const outcome = (async (): Promise<ConnectError | undefined> => {
    try {
      for await (const m of createClient(kiln.Agent, connection.transport).connect(requests())) received.push(m);
      return undefined;
    } catch (err) {
      return ConnectError.from(err);
    }
  })();
  return {
    registered: () => received.some((m) => m.kind.case === "registered"),
    /** Resolves with the error the stream ended with (undefined when it ended cleanly). */
    outcome,
    close() {
      end();
      connection.close();
    },
  };
}

describe("agents and node names", () => {
  let t: TestControlPlane;
  const log: string[] = [];
  const closers: (() => unknown)[] = [];
  before(async () => {
    t = await startTestControlPlane({ heartbeatIntervalMs: HEARTBEAT_MS, log: (line) => log.push(line) });
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await t.close();
  });
  const agent = (name: string) =>
    startAgent({ endpoint: t.cp.endpoint, name, executors: 1, workDir: tempDir("node-name"), log: () => {} });
  const nodeState = async (name: string) =>
    (await t.frontend.listNodes({})).nodes.find((n) => n.metadata?.name === name)?.status?.state;

  it("a second agent asking for a live node's name is refused with the reason, and the first keeps the node", async () => {
    const first = await agent("twin");
    closers.push(() => first.close());
    await assert.rejects(
      agent("twin"),
      /refused this agent: node "twin" is already connected: another agent \(pid \d+ on host \S+, connected since .*, last heard from \d+ ms ago\) holds that name\. Give this agent another --name, or stop the other one \(ALREADY_EXISTS\)/,
    );
    assert.equal(await nodeState("twin"), flame.NodeState.Ready);
    assert.ok(!log.some((l) => l.startsWith("node twin disconnected")), log.join("\n"));
  });

  it("an agent gets the name of a stream that has stopped heartbeating (an agent restarted after a crash)", async () => {
    const stale = rawAgent(t.cp.endpoint, "restarted", "old-process", true);
    closers.push(() => stale.close());
    await waitFor("the raw agent to register", () => stale.registered() || undefined);
    // Refused while the old stream could still be alive; given once it has missed two heartbeats.
    const fresh = await waitFor("the name to be given to the new agent", () => agent("restarted"), 20_000);
    closers.push(() => fresh.close());
    const ended = await stale.outcome;
    assert.match(ended?.rawMessage ?? "", /replaced by a new connection \(the old stream was silent for \d+ ms\)/);
    assert.equal(await nodeState("restarted"), flame.NodeState.Ready);
  });

  it("the same agent process reconnecting takes its node back at once; another process is refused", async () => {
    const old = rawAgent(t.cp.endpoint, "same", "instance-1");
    closers.push(() => old.close());
    await waitFor("the first stream to register", () => old.registered() || undefined);

    const other = rawAgent(t.cp.endpoint, "same", "instance-2");
    closers.push(() => other.close());
    const refused = await other.outcome;
    assert.equal(refused?.code, Code.AlreadyExists);
    assert.match(refused!.rawMessage, /node "same" is already connected: another agent \(pid 4242 on host raw-host/);

    const again = rawAgent(t.cp.endpoint, "same", "instance-1");
    closers.push(() => again.close());
    await waitFor("the same agent's new stream to register", () => again.registered() || undefined);
    assert.match((await old.outcome)?.rawMessage ?? "", /replaced by a new connection \(the same agent reconnected\)/);
  });
});
