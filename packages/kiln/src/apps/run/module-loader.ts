import * as nodeModule from "node:module";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { MessageChannel, type MessagePort } from "node:worker_threads";
import { register as registerTsxCjs } from "tsx/cjs/api";
import { register as registerTsxEsm } from "tsx/esm/api";
import { isBare, type ProjectScope, type ResolveHookData } from "./resolve-hook.js";

const HOOK_ANSWER_MS = 10_000;

/**
 * Loads modules of the user's project: TypeScript through tsx (no build
 * step), the Kiln packages resolved to kiln-run's own, bare imports from the
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
  private cjsScope: { appDir: string; depsDir?: string } | undefined;

  /** Registers the hooks (once) and points them at this session's project and dependencies. */
  async prepare(o: { appDir: string; depsDir?: string }): Promise<void> {
    if (!this.port) {
      this.port = registerHooks();
      await resolveCommonJsLikeImports(() => this.cjsScope);
    }
    this.cjsScope = { appDir: o.appDir + path.sep, ...(o.depsDir ? { depsDir: o.depsDir } : {}) };
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
  // Registered after tsx, so it runs first and sees the Kiln packages before anything else does.
  const { port1, port2 } = new MessageChannel();
  const data: ResolveHookData = { providedParentURL: import.meta.url, port: port2 };
  nodeModule.register(new URL("./resolve-hook.js", import.meta.url), {
    parentURL: import.meta.url,
    data,
    transferList: [port2],
  });
  port1.unref();
  return port1;
}

type ResolveFilename = (
  request: string,
  parent: { filename?: string | null } | undefined,
  ...rest: unknown[]
) => string;

/** The entries a project's CommonJS module may require(), and the file that stands for each (require-provided/). */
const REQUIRE_STAND_INS: Record<string, string> = {
  "@kiln/sdk": "sdk.cjs",
  "@kiln/service": "service.cjs",
  "@kiln/protocol": "protocol.cjs",
  "@kiln/protocol/proto": "protocol-proto.cjs",
};

/**
 * The CommonJS twin of resolve-hook.ts. Node's module hooks do not see the
 * require() calls of a CommonJS module (before Node 22), so a project's
 * CommonJS module would find neither the Kiln packages nor the dependencies
 * installed for its session. Node has no public API for this;
 * Module._resolveFilename is the seam tsx and module-alias use too. Only
 * requires from the session's project are redirected.
 *
 * The Kiln packages are ES module graphs, which require() cannot load while
 * async hooks are registered (Node 20), so each entry resolves to a CommonJS
 * file that hands out kiln-run's own, already loaded copy: a project gets the
 * same module whichever way it asks.
 */
async function resolveCommonJsLikeImports(
  scope: () => { appDir: string; depsDir?: string } | undefined,
): Promise<void> {
  for (const entry of Object.keys(REQUIRE_STAND_INS))
    (globalThis as Record<symbol, unknown>)[Symbol.for(`kiln-run:${entry}`)] = await import(entry);
  const Module = nodeModule.Module as unknown as { _resolveFilename: ResolveFilename };
  const original = Module._resolveFilename;
  Module._resolveFilename = function (request, parent, ...rest) {
    const current = scope();
    if (current === undefined || parent?.filename?.startsWith(current.appDir) !== true)
      return original.call(this, request, parent, ...rest);
    const standIn = REQUIRE_STAND_INS[request];
    if (standIn) return fileURLToPath(new URL(`./require-provided/${standIn}`, import.meta.url));
    if (current.depsDir && isBare(request)) {
      try {
        return original.call(this, request, parent, rest[0], { paths: [current.depsDir] });
      } catch (err) {
        if ((err as { code?: unknown }).code !== "MODULE_NOT_FOUND") throw err;
      }
    }
    return original.call(this, request, parent, ...rest);
  };
}
