import { createClient, type Client } from "@connectrpc/connect";
import { createClusterTransport } from "@kiln/protocol/transport";
import { flame, kiln } from "@kiln/protocol/proto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startControlPlane, type ControlPlane, type ControlPlaneOptions } from "../../src/control/server.js";

export interface TestControlPlane {
  cp: ControlPlane;
  dataDir: string;
  frontend: Client<typeof flame.Frontend>;
  kiln: Client<typeof kiln.Frontend>;
  close(): Promise<void>;
}

const made: string[] = [];
process.on("exit", () => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh temp directory, removed when the test process exits. */
export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kiln-test-${prefix}-`));
  made.push(dir);
  return dir;
}

/** A real control plane on an ephemeral loopback port with a fresh SQLite file, plus raw gRPC clients. */
export async function startTestControlPlane(
  options: Partial<ControlPlaneOptions> = {},
  token?: string,
): Promise<TestControlPlane> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? tempDir("cp");
  const cp = await startControlPlane({ port: 0, log: () => {}, ...options, dataDir });
  const { transport, close } = createClusterTransport({ endpoint: cp.endpoint, ...(token ? { token } : {}) });
  return {
    cp,
    dataDir,
    frontend: createClient(flame.Frontend, transport),
    kiln: createClient(kiln.Frontend, transport),
    async close() {
      close();
      await cp.close();
      if (ownDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export function appSpec(init: Partial<flame.ApplicationSpec> = {}): flame.ApplicationSpec {
  return {
    $typeName: "flame.v1.ApplicationSpec",
    shim: flame.Shim.Host,
    labels: [],
    arguments: [],
    environments: [],
    ...init,
  };
}
