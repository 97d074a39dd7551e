import { ErrorCode, KilnError } from "@kiln/protocol";

/** The ports a Kiln server listens on; which command flag moves each one is the CLI's business. */
export type PortRole = "grpc" | "json" | "cache";

const DESCRIPTION: Record<PortRole, string> = {
  grpc: "the control plane's gRPC/HTTP2 port",
  json: "the control plane's JSON/HTTP1.1 port",
  cache: "the object cache's port",
};

/** A server could not listen because another process holds its port (EADDRINUSE). */
export class PortInUseError extends KilnError {
  constructor(
    readonly port: number,
    readonly role: PortRole,
    options?: { cause?: unknown },
  ) {
    super(
      ErrorCode.FailedPrecondition,
      `port ${port} (${DESCRIPTION[role]}) is already in use by another process`,
      options,
    );
  }
}

/**
 * A `.catch` handler for a listen: EADDRINUSE becomes a PortInUseError
 * naming the port and what it was for; anything else is rethrown.
 *
 * @example
 * await listenHttp1(host, port, handler).catch(portInUse(port, "json"));
 */
export function portInUse(port: number, role: PortRole): (err: unknown) => never {
  return (err) => {
    if ((err as NodeJS.ErrnoException | undefined)?.code === "EADDRINUSE")
      throw new PortInUseError(port, role, { cause: err });
    throw err;
  };
}
