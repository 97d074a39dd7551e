import { extract, ReadEntry } from "tar";
import { checkEntryPath, checkSymlinkTarget, UnsafeEntryError } from "./archive-entries.js";
import { PackageLimitError, type ExtractionBudget } from "./extraction-limits.js";

const ALLOWED_TYPES = new Set(["File", "OldFile", "ContiguousFile", "Directory", "SymbolicLink", "Link"]);

/** Why this tar entry must not be installed, or undefined when it may be. */
function tarEntryProblem(entry: ReadEntry, budget: ExtractionBudget): UnsafeEntryError | PackageLimitError | undefined {
  try {
    checkEntryPath(entry.path);
    if (!ALLOWED_TYPES.has(entry.type))
      throw new UnsafeEntryError(
        entry.path,
        `a ${entry.type} entry (only files, directories and links may be installed)`,
      );
    if (entry.type === "SymbolicLink") checkSymlinkTarget(entry.path, entry.linkpath ?? "");
    // A hard link's target is a path from the archive root, like an entry's own.
    if (entry.type === "Link") checkEntryPath(entry.linkpath ?? "");
    // The header's size is what node-tar writes: it reads exactly that many bytes for the entry.
    budget.add(entry.path, entry.size);
  } catch (err) {
    if (err instanceof UnsafeEntryError || err instanceof PackageLimitError) return err;
    throw err;
  }
  return undefined;
}

/**
 * Extracts a .tar.gz into `dest` (an empty dir). The first unsafe entry, or the
 * first past a limit of `budget`, fails the whole extraction; node-tar's own strict mode (no writing through
 * symlinks, bad headers are errors) backs the entry checks up.
 *
 * @example
 * await extractTarGz("/tmp/app.tgz", "/work/packages/releases/.tmp-1-ab", new ExtractionBudget(limits, size));
 */
export async function extractTarGz(file: string, dest: string, budget: ExtractionBudget): Promise<void> {
  let rejected: UnsafeEntryError | PackageLimitError | undefined;
  const filter = (_path: string, entry: unknown) => {
    if (rejected || !(entry instanceof ReadEntry)) return false;
    rejected = tarEntryProblem(entry, budget);
    return rejected === undefined;
  };
  try {
    // preserveOwner: false, or an agent running as root would chown files to the archive's uids.
    await extract({ file, cwd: dest, strict: true, preserveOwner: false, filter });
  } catch (err) {
    throw rejected ?? new Error(`corrupt .tar.gz: ${(err as Error).message}`);
  }
  if (rejected) throw rejected;
}
