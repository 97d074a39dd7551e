import { InvalidArgumentError, KilnError } from "@kiln/protocol";
import { reportReady, reportStartFailure, whenParentGone } from "../cluster/supervisor-channel.js";
import { PortInUseError, type PortRole } from "../net/port-in-use.js";
import { CommandFailed, UsageError } from "./exit-codes.js";

/** Anything `kiln up/server/agent/cache` starts. */
export interface Closable {
  /** Where it serves, when it is a server; reported to a supervising `kiln up`. */
  endpoint?: string;
  /** Settles with the reason if it stops by itself (a control plane whose store failed). */
  failed?: Promise<Error>;
  close(): Promise<void>;
}

/** The flag that moves each port, for the message when one is taken. */
export type PortFlags = Record<PortRole, string>;

/** What `kiln server` and `kiln cache` call their ports; `kiln up` names its cache's port --cache-port. */
export const DEFAULT_PORT_FLAGS: PortFlags = {
  grpc: "--port",
  json: "--port (the JSON port is --port + 1)",
  cache: "--port",
};

const SHUTDOWN_SIGNALS = ["SIGINT", "SIGTERM"] as const;

/**
 * Resolves on the first SIGINT or SIGTERM. A second one while shutting down exits at
 * once (status 130), for when a clean close hangs. A process supervised by
 * `kiln up` gets a SIGTERM from itself when `kiln up` is gone, however it
 * ended, so it never outlives it.
 */
export function nextShutdownSignal(): Promise<NodeJS.Signals> {
  whenParentGone(() => {
    process.stderr.write("the supervising kiln up is gone: shutting down\n");
    process.kill(process.pid, "SIGTERM");
  });
  return new Promise((resolve) => {
    let received = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (received) {
        process.stderr.write(`${signal} again: exiting without a clean shutdown\n`);
        process.exit(130);
      }
      received = true;
      resolve(signal);
    };
    for (const signal of SHUTDOWN_SIGNALS) process.on(signal, onSignal);
  });
}

/** Turns a server start failure into the error users should see (bad settings → usage error). */
function explainStartFailure(err: unknown, what: string, portFlags: PortFlags): unknown {
  if (err instanceof InvalidArgumentError) return new UsageError(`${err.message} (${err.code})`);
  if (err instanceof PortInUseError)
    return new CommandFailed(
      `cannot start ${what}: ${err.message}; is another kiln running? Choose another with ${portFlags[err.role]}`,
    );
  const errno = err instanceof Error ? (err as NodeJS.ErrnoException).code : undefined;
  if (errno === "EADDRNOTAVAIL")
    return new UsageError(`cannot start ${what}: that host address is not on this machine`);
  return err instanceof KilnError || !(err instanceof Error)
    ? err
    : new CommandFailed(`cannot start ${what}: ${err.message}`);
}

/**
 * An AbortSignal that fires on the first SIGINT/SIGTERM while `fn` runs, so a long
 * command can clean up (close its session, stop its cluster) before exiting.
 *
 * @example
 * await abortOnSignal((signal) => runPing(client, { tasks: 10, signal }));
 */
export async function abortOnSignal<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  for (const signal of SHUTDOWN_SIGNALS) process.once(signal, onSignal);
  try {
    return await fn(controller.signal);
  } finally {
    for (const signal of SHUTDOWN_SIGNALS) process.off(signal, onSignal);
  }
}

/**
 * Starts a server, announces it, runs until SIGINT/SIGTERM, then closes it cleanly.
 * Signals are caught from the start, so Ctrl-C during startup still closes what started.
 *
 * @example
 * await serveUntilSignal("the control plane", () => startControlPlane({ dataDir }), (cp) => console.log(cp.endpoint));
 */
export async function serveUntilSignal<T extends Closable>(
  what: string,
  start: () => Promise<T>,
  announce: (started: T) => void,
  portFlags: PortFlags = DEFAULT_PORT_FLAGS,
): Promise<void> {
  const signal = nextShutdownSignal();
  let started: T;
  try {
    started = await start();
  } catch (err) {
    const explained = explainStartFailure(err, what, portFlags);
    await reportStartFailure(err, explained instanceof Error ? explained.message : String(explained));
    throw explained;
  }
  announce(started);
  reportReady(started.endpoint);
  const stopped = await Promise.race([
    signal.then((received) => ({ received })),
    ...(started.failed ? [started.failed.then((failure) => ({ failure }))] : []),
  ]);
  if ("failure" in stopped) {
    process.stderr.write(`${what} stopped: ${stopped.failure.message}\n`);
    await started.close();
    throw stopped.failure;
  }
  process.stdout.write(`\n${stopped.received}: stopping ${what}...\n`);
  await started.close();
  process.stdout.write(`Stopped.\n`);
}
