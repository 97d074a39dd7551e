import { ErrorCode, KilnError } from "@kiln/protocol";

/** A body larger than the server's maxObjectBytes (HTTP 413). */
export class ObjectTooLargeError extends KilnError {
  constructor(limit: number) {
    super(ErrorCode.ResourceExhausted, `body exceeds the server's maxObjectBytes (${limit} bytes)`);
  }
}

/** The backend cannot keep one more object; the message names the limit (HTTP 507). */
export class StorageFullError extends KilnError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.ResourceExhausted, message, options);
  }
}
