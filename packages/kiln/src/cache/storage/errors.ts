import { ErrorCode, KilnError } from "@kiln/protocol";
import { diskFullCode } from "../../util/disk-full.js";

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

/**
 * The refusal of a write that ran out of disk (ENOSPC, EDQUOT, or SQLite's SQLITE_FULL), or undefined
 * for any other error. What the write had put on disk is removed by its own clean-up (temp files,
 * adopted blobs), so the answer can say nothing was kept.
 *
 * @example
 * const full = diskFullError(err); if (full) return sendError(req, res, full, log);
 */
export function diskFullError(err: unknown): StorageFullError | undefined {
  const code = diskFullCode(err);
  if (!code) return undefined;
  return new StorageFullError(`the cache's storage is full (${code}); nothing of this write was kept`, {
    cause: err,
  });
}
