import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The built-in services, each a folder under `apps/` with a `main.ts`. */
export type BuiltinService = "ping" | "run" | "exec";

/**
 * Absolute path of a built-in service's compiled entry
 * (`<package>/dist/apps/<service>/main.js`), also when this module itself
 * runs from `src/` (tests through tsx): services always run compiled.
 *
 * @example
 * spawn(process.execPath, [serviceEntry("ping")], { env: { ...process.env, KILN_INSTANCE_ENDPOINT: sock } });
 */
export function serviceEntry(service: BuiltinService): string {
  const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
  return path.join(packageRoot, "dist", "apps", service, "main.js");
}
