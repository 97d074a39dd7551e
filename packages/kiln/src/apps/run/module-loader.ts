import * as nodeModule from "node:module";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { MessageChannel, type MessagePort } from "node:worker_threads";
import { register as registerTsxCjs } from "tsx/cjs/api";
import { register as registerTsxEsm } from "tsx/esm/api";
import type { ProjectScope, ResolveHookData } from "./resolve-hook.js";

const HOOK_ANSWER_MS = 10_000;

/**
 * Loads modules of the user's project: TypeScript through tsx (no build
 * step), `@kiln/sdk` resolved to kiln-run's own SDK, bare imports from the
 * dependencies installed for the session. Hooks are registered on first use;
 * each session then tells them where its project and dependencies are.
 *
 * @example
 * const loader = new ModuleLoader();
 * await loader.prepare({ appDir, depsDir });
 * const add = await loader.loadExport(appDir, "src/math.ts", "add");
 */
export class ModuleLoader {
  private port: MessagePort | undefined;

  /** Registers the hooks (once) and points them at this session's project and dependencies. */
  async prepare(o: { appDir: string; depsDir?: string }): Promise<void> {
    this.port ??= registerHooks();
    const scope: ProjectScope = {
      appDirURL: pathToFileURL(o.appDir + path.sep).href,
      ...(o.depsDir ? { depsParentURL: pathToFileURL(path.join(o.depsDir, "package.json")).href } : {}),
    };
    const port = this.port;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error("the module resolution hooks did not answer")), HOOK_ANSWER_MS);
      port.once("message", () => resolve());
      port.postMessage(scope);
    }).finally(() => clearTimeout(timer));
  }

  /**
   * Imports `modulePath` (relative to `appDir`, which it must stay inside)
   * and returns the export `name`; for a CommonJS module also looks in its
   * `module.exports`. Throws with the module's own error when it fails to load.
   */
  async loadExport(appDir: string, modulePath: string, name: string): Promise<unknown> {
    const file = path.resolve(appDir, modulePath);
    const rel = path.relative(appDir, file);
    if (rel.startsWith("..") || path.isAbsolute(rel))
      throw new Error(`module "${modulePath}" is outside the application's package`);
    let namespace: Record<string, unknown>;
    try {
      namespace = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
    } catch (err) {
      throw new Error(`cannot load ${modulePath}: ${describeError(err)}`, { cause: err });
    }
    if (name in namespace) return namespace[name];
    const cjs = namespace.default;
    if (name !== "default" && typeof cjs === "object" && cjs !== null && name in cjs)
      return (cjs as Record<string, unknown>)[name];
    throw new Error(`${modulePath} has no export "${name}" (exports: ${Object.keys(namespace).join(", ") || "none"})`);
  }
}

function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name === "Error" ? "" : `${err.name}: `}${err.message}` : String(err);
}

function registerHooks(): MessagePort {
  registerTsxEsm();
  registerTsxCjs();
  // Registered after tsx, so it runs first and sees `@kiln/sdk` before anything else does.
  const { port1, port2 } = new MessageChannel();
  const data: ResolveHookData = { sdkParentURL: import.meta.url, port: port2 };
  nodeModule.register(new URL("./resolve-hook.js", import.meta.url), {
    parentURL: import.meta.url,
    data,
    transferList: [port2],
  });
  port1.unref();
  return port1;
}
