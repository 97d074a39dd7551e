import { ErrorCode, type KilnError } from "@kiln/protocol";

// Codes a new connection may fix; anything else (a session gone, a bad token) it will not.
const CONNECTION_LOSS = new Set<string>([
  ErrorCode.Unavailable,
  ErrorCode.Internal,
  ErrorCode.DeadlineExceeded,
  ErrorCode.Cancelled,
]);

/** True when `error` may be a lost or unreachable cluster, so trying again may succeed. */
export function isConnectionLoss(error: KilnError): boolean {
  return CONNECTION_LOSS.has(error.code);
}

/** Back-off between tries after a connection loss: 100 ms doubling, at most 2 s. */
export function nextBackoffMs(previousMs: number | undefined): number {
  return previousMs === undefined ? 100 : Math.min(previousMs * 2, 2_000);
}
