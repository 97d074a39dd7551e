import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The built-in services, each a folder under `apps/` with a `main.ts`. */
export type BuiltinService = "ping" | "run" | "exec";

const BUILTIN_SERVICES: readonly BuiltinService[] = ["ping", "run", "exec"];

/**
 * How a built-in application names its service: a symbol, not a path. Each
 * node resolves it to its own Node and its own install (see
 * {@link resolveBuiltinCommand}), so an agent whose Kiln lives somewhere else
 * than the control plane's still finds the service.
 */
const BUILTIN_COMMAND_PREFIX = "kiln:builtin/";

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

/**
 * The command a built-in application is registered with (`kiln:builtin/ping`).
 *
 * @example
 * create(flame.ApplicationSpecSchema, { command: builtinCommand("ping") })
 */
export function builtinCommand(service: BuiltinService): string {
  return `${BUILTIN_COMMAND_PREFIX}${service}`;
}

/**
 * What this node runs for an application's command and arguments: a built-in
 * command becomes this process's Node and this install's service entry (the
 * registered arguments follow it); any other command is left as it is.
 * Throws on a built-in this version does not have.
 *
 * @example
 * resolveBuiltinCommand("kiln:builtin/ping", []) // { command: "/usr/bin/node", args: ["/opt/kiln/…/dist/apps/ping/main.js"] }
 * resolveBuiltinCommand("python3", ["svc.py"])  // { command: "python3", args: ["svc.py"] }
 */
export function resolveBuiltinCommand(command: string, args: readonly string[]): { command: string; args: string[] } {
  if (!command.startsWith(BUILTIN_COMMAND_PREFIX)) return { command, args: [...args] };
  const service = command.slice(BUILTIN_COMMAND_PREFIX.length);
  if (!(BUILTIN_SERVICES as readonly string[]).includes(service))
    throw new Error(
      `this node's Kiln has no built-in service "${service}" (it has ${BUILTIN_SERVICES.join(", ")}): ` +
        `is the agent older than the control plane?`,
    );
  return { command: process.execPath, args: [serviceEntry(service as BuiltinService), ...args] };
}
