const DISK_FULL_CODES = new Set(["ENOSPC", "EDQUOT", "SQLITE_FULL"]);

/**
 * The code of an error that means the disk (or quota) is full: ENOSPC, EDQUOT, or SQLite's
 * SQLITE_FULL; undefined for any other error.
 *
 * @example
 * const code = diskFullCode(err); // "ENOSPC"
 */
export function diskFullCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && DISK_FULL_CODES.has(code) ? code : undefined;
}
