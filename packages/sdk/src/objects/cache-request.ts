/**
 * The shape of one small request to the object cache and its whole reply:
 * what the HTTP client sends alone and the RequestBatcher sends in batches.
 */

export type Method = "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE";

export interface CacheRequest {
  method: Method;
  /** Path and query, already safe to send (keys are validated before they get here). */
  path: string;
  headers?: Record<string, string>;
  body?: Uint8Array;
  /** Safe to send again when its connection dies before the answer, like a GET (a batch of reads). */
  resendable?: boolean;
}

/** A reply read whole; header names are lower case, repeated headers joined with ", ". */
export interface WholeResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** Whether a request may be sent again when its connection dies before the answer. */
export function isResendable(spec: { method: Method; resendable?: boolean }): boolean {
  return spec.method === "GET" || spec.method === "HEAD" || spec.resendable === true;
}
