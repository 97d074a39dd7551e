/** What one package may extract to. */
export interface ExtractionLimits {
  /** Total bytes of all files (`--max-package-bytes`). */
  maxBytes: number;
  /** Files, directories and links (`--max-package-entries`). */
  maxEntries: number;
}

export const DEFAULT_MAX_PACKAGE_BYTES = 4 * 1024 ** 3;
export const DEFAULT_MAX_PACKAGE_ENTRIES = 100_000;
/**
 * Extracted bytes per archive byte, over the whole archive, beyond which it is a bomb. Code and
 * node_modules compress 3–10:1; a 2 GiB file of zeros in a 9.4 MB tar.gz is 229:1.
 */
export const MAX_COMPRESSION_RATIO = 200;
/** Below this much extracted, the ratio is not held against an archive (a tiny archive of a sparse file). */
export const RATIO_APPLIES_FROM_BYTES = 64 * 1024 * 1024;

/** A package that would extract past a limit; the message names the limit and its flag. */
export class PackageLimitError extends Error {
  constructor(
    readonly limit: "--max-package-bytes" | "--max-package-entries" | "compression ratio",
    message: string,
  ) {
    super(message);
    this.name = "PackageLimitError";
  }
}

/**
 * Counts an archive's entries and bytes as they are about to be written, and throws a
 * PackageLimitError at the first that would pass a limit, before it is written.
 *
 * @example
 * const budget = new ExtractionBudget(limits, archiveBytes);
 * for (const entry of entries) { budget.add(entry.name, entry.size); write(entry); }
 */
export class ExtractionBudget {
  private entries = 0;
  private bytes = 0;

  constructor(
    private readonly limits: ExtractionLimits,
    private readonly archiveBytes: number,
  ) {}

  /** One more entry of `size` bytes (0 for a directory or link). */
  add(name: string, size: number): void {
    this.entries++;
    this.bytes += size;
    if (this.entries > this.limits.maxEntries)
      throw new PackageLimitError(
        "--max-package-entries",
        `package has more than ${this.limits.maxEntries} entries (--max-package-entries); refused at ${JSON.stringify(name)}`,
      );
    if (this.bytes > this.limits.maxBytes)
      throw new PackageLimitError(
        "--max-package-bytes",
        `package extracts to more than ${this.limits.maxBytes} bytes (--max-package-bytes); refused at ${JSON.stringify(name)}`,
      );
    if (this.bytes > RATIO_APPLIES_FROM_BYTES && this.bytes > this.archiveBytes * MAX_COMPRESSION_RATIO)
      throw new PackageLimitError(
        "compression ratio",
        `package extracts to over ${MAX_COMPRESSION_RATIO} times its ${this.archiveBytes} bytes ` +
          `(compression ratio limit ${MAX_COMPRESSION_RATIO}:1, a decompression bomb?); refused at ${JSON.stringify(name)}`,
      );
  }
}
