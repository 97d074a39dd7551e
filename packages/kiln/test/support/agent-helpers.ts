import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { serviceEntry } from "../../src/apps/service-entry.js";

type AppInit = MessageInitShape<typeof flame.ApplicationSpecSchema>;

const supportDir = path.dirname(fileURLToPath(import.meta.url));
const tsxLoader = import.meta.resolve("tsx");

export const enc = (s: string) => new TextEncoder().encode(s);
export const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

/** Whether a process with this pid exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The compiled kiln-ping service, as the control plane registers it (needs `tsc -b` first). */
export function pingApp(init: AppInit = {}): flame.ApplicationSpec {
  if (!fs.existsSync(serviceEntry("ping")))
    throw new Error(`${serviceEntry("ping")} is missing: build first (npx tsc -b packages/sdk packages/kiln)`);
  return create(flame.ApplicationSpecSchema, { command: process.execPath, arguments: [serviceEntry("ping")], ...init });
}

/** A TypeScript test service from test/support, run through tsx. */
export function fixtureApp(file: string, init: AppInit = {}): flame.ApplicationSpec {
  return create(flame.ApplicationSpecSchema, {
    command: process.execPath,
    ...init,
    arguments: ["--import", tsxLoader, path.join(supportDir, file), ...(init.arguments ?? [])],
  });
}

export function bindMessage(
  executorId: string,
  application: flame.ApplicationSpec,
  init: MessageInitShape<typeof kiln.BindSchema> = {},
): kiln.Bind {
  return create(kiln.BindSchema, {
    executorId,
    sessionId: "s-1",
    applicationName: "test-app",
    application,
    concurrency: 1,
    ...init,
  });
}

export function task(executorId: string, taskId: string | number, input?: string, attempt = 1): kiln.TaskAssignment {
  return create(kiln.TaskAssignmentSchema, {
    executorId,
    sessionId: "s-1",
    taskId: String(taskId),
    attempt,
    ...(input !== undefined ? { input: enc(input) } : {}),
  });
}
