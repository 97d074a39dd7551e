import { kiln } from "@kiln/protocol/proto";

/** A bind that failed in a known phase; `code` is reported as the BIND_FAILED code. */
export class BindError extends Error {
  constructor(
    readonly code: kiln.BindFailure,
    message: string,
  ) {
    super(message);
    this.name = "BindError";
  }
}

/** The message of anything thrown. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
