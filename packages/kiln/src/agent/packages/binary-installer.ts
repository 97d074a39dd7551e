import * as fs from "node:fs/promises";
import * as path from "node:path";
import { exists } from "../../package-store/layout.js";
import { prependPath } from "../../util/search-path.js";

/**
 * The "binary" installer: makes every file in `<release>/bin` executable
 * (a single-file package already is) and puts `bin/` and the release on PATH,
 * `lib/` (if there is one) on LD_LIBRARY_PATH.
 *
 * @example
 * const env = await installBinary("/work/packages/releases/9f…"); // { PATH: "/work/…/bin:/work/…:/usr/bin", … }
 */
export async function installBinary(dir: string): Promise<Record<string, string>> {
  const bin = path.join(dir, "bin");
  const entries = await fs.readdir(bin, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const file = path.join(bin, entry.name);
    const { mode } = await fs.stat(file);
    if ((mode & 0o111) !== 0o111) await fs.chmod(file, mode | 0o111);
  }
  const env: Record<string, string> = { PATH: prependPath([bin, dir], process.env.PATH) };
  const lib = path.join(dir, "lib");
  if (await exists(lib)) env.LD_LIBRARY_PATH = prependPath([lib], process.env.LD_LIBRARY_PATH);
  return env;
}
