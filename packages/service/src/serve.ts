import { connectNodeAdapter } from "@connectrpc/connect-node";
import * as fs from "node:fs/promises";
import * as http2 from "node:http2";
import { flame, kiln } from "@kiln/protocol/proto";
import type { ServiceHandlers } from "./handlers.js";
import { flameInstance, kilnInstance } from "./instance-services.js";
import { removeStaleSocket, resolveSocketPath, INSTANCE_READ_MAX_BYTES, StreamRoutes } from "@kiln/protocol/transport";
import { processExists } from "@kiln/protocol";

export interface ServeOptions {
  /** Unix socket to serve on; default: $KILN_INSTANCE_ENDPOINT, else $FLAME_INSTANCE_ENDPOINT. */
  socketPath?: string;
  /**
   * Close and exit the process on SIGTERM/SIGINT (the agent stops a service
   * with SIGTERM), and when the agent that started it dies. Default: true
   * when the socket comes from the environment (the process was started as a
   * service), false when `socketPath` is given (the caller owns the process
   * and calls `close()`).
   */
  exitOnSignal?: boolean;
}

export interface ServiceHandle {
  socketPath: string;
  /** Stops serving and removes the socket. */
  close(): Promise<void>;
}

const AGENT_CHECK_MS = 1_000;

/**
 * Serves a service's handlers on a Unix socket, both as flame.v1.Instance
 * (one call per task) and as kiln.v1.Instance/Invoke (batched stream), so
 * Kiln agents and Flame executors can both run it.
 *
 * @example
 * import { serve } from "@kiln/service";
 * await serve({ onTaskInvoke: ({ input }) => `got ${input?.length ?? 0} bytes` });
 */
export async function serve(handlers: ServiceHandlers, options: ServeOptions = {}): Promise<ServiceHandle> {
  const socketPath = resolveSocketPath(options.socketPath);
  await removeStaleSocket(socketPath);
  const flameImpl = flameInstance(handlers);
  const kilnImpl = kilnInstance(handlers);
  const streams = new StreamRoutes({ readMaxBytes: INSTANCE_READ_MAX_BYTES }).add(kiln.Instance, kilnImpl);
  const server = http2.createServer(
    {},
    streams.handler(
      connectNodeAdapter({
        routes: (router) => {
          router.service(flame.Instance, flameImpl);
          router.service(kiln.Instance, kilnImpl);
        },
      }),
    ),
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
    // Bytes that are not HTTP/2 end that connection, never the service.
    session.on("error", () => session.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });

  let closing: Promise<void> | undefined;
  let stopWatching = noop;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      stopWatching();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) session.destroy();
      await closed;
      await fs.rm(socketPath, { force: true });
    })());
  if (options.exitOnSignal ?? options.socketPath === undefined) stopWatching = exitWhenTold(close);
  return { socketPath, close };
}

function noop(): void {}

/**
 * Closes and exits on SIGTERM/SIGINT, and once the agent that started this
 * process (KILN_AGENT_PID) is gone, even if it died before serve() ran: a
 * service must not outlive its agent. Returns a function that stops watching.
 */
function exitWhenTold(close: () => Promise<void>): () => void {
  const exit = () => {
    void close().finally(() => process.exit(0));
  };
  process.once("SIGTERM", exit);
  process.once("SIGINT", exit);
  const agentPid = Number(process.env.KILN_AGENT_PID);
  let agentCheck: NodeJS.Timeout | undefined;
  if (Number.isSafeInteger(agentPid) && agentPid > 0) {
    // Reparenting is the sure sign for a direct child; liveness covers the rest (and pid reuse is rare).
    const startedAsChild = process.ppid === agentPid;
    const agentGone = () => (startedAsChild && process.ppid !== agentPid) || !processExists(agentPid);
    if (agentGone()) exit();
    agentCheck = setInterval(() => {
      if (agentGone()) exit();
    }, AGENT_CHECK_MS);
    agentCheck.unref();
  }
  return () => {
    process.off("SIGTERM", exit);
    process.off("SIGINT", exit);
    clearInterval(agentCheck);
  };
}
