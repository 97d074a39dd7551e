import * as path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Absolute path of the compiled kiln-exec service entry
 * (`<package>/dist/apps/exec/main.js`), also when this module itself runs
 * from `src/` (tests through tsx): the service always runs compiled.
 *
 * @example
 * spawn(process.execPath, [execServiceEntry()], { env: { ...process.env, KILN_INSTANCE_ENDPOINT: sock } });
 */
export function execServiceEntry(): string {
  const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
  return path.join(packageRoot, "dist", "apps", "exec", "main.js");
}
