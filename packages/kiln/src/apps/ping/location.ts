import * as path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Absolute path of the compiled kiln-ping service entry
 * (`<package>/dist/apps/ping/main.js`), also when this module itself runs
 * from `src/` (tests through tsx): the service always runs compiled.
 *
 * @example
 * spawn(process.execPath, [pingServiceEntry()], { env: { ...process.env, KILN_INSTANCE_ENDPOINT: sock } });
 */
export function pingServiceEntry(): string {
  const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
  return path.join(packageRoot, "dist", "apps", "ping", "main.js");
}
