import * as fs from "node:fs/promises";
import * as net from "node:net";

/** Env vars naming the socket a service serves on; an agent sets both. */
export const SOCKET_ENV_VARS = ["KILN_INSTANCE_ENDPOINT", "FLAME_INSTANCE_ENDPOINT"] as const;

/**
 * The socket path from `explicit`, else from KILN_INSTANCE_ENDPOINT, else
 * FLAME_INSTANCE_ENDPOINT. A `unix:` / `unix://` prefix is accepted.
 */
export function resolveSocketPath(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const raw = explicit ?? SOCKET_ENV_VARS.map((name) => env[name]).find((v) => v !== undefined && v !== "");
  if (raw === undefined)
    throw new Error(
      `serve(): no socket to serve on: pass options.socketPath or set ${SOCKET_ENV_VARS.join(" or ")} ` +
        `(a Kiln agent sets them when it starts the service)`,
    );
  return raw.replace(/^unix:(\/\/)?/, "");
}

/** Whether something accepts connections on the Unix socket at `socketPath` (false on any error). */
export function acceptsConnections(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * Removes a socket file left behind by a process that is gone. Refuses to
 * touch a path that is not a socket, or a socket someone still serves on.
 */
export async function removeStaleSocket(socketPath: string): Promise<void> {
  const stat = await fs.lstat(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  if (!stat) return;
  if (!stat.isSocket()) throw new Error(`serve(): ${socketPath} exists and is not a socket; not removing it`);
  if (await acceptsConnections(socketPath)) throw new Error(`serve(): another process already serves on ${socketPath}`);
  await fs.rm(socketPath, { force: true });
}
