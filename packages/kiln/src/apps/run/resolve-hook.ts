// Module resolution hooks of kiln-run (they run on Node's hooks thread, see module-loader.ts).
import type { InitializeHook, ResolveHook } from "node:module";
import type { MessagePort } from "node:worker_threads";
import { isProvided } from "../../package-store/provided.js";

/** Given once, at registration. */
export interface ResolveHookData {
  /** A URL inside kiln-run: the provided packages are resolved as if imported from there. */
  providedParentURL: string;
  /** Receives the ProjectScope of each session; each message is acknowledged with "ok". */
  port: MessagePort;
}

/** Where the session's project and its installed dependencies are. */
export interface ProjectScope {
  /** `file:///…/releases/<sha>/`, with the trailing slash. */
  appDirURL: string;
  /** A URL inside the directory whose node_modules holds the project's dependencies. */
  depsParentURL?: string;
}

let providedParentURL = "";
let scope: ProjectScope | undefined;

export const initialize: InitializeHook<ResolveHookData> = (data) => {
  providedParentURL = data.providedParentURL;
  data.port.on("message", (message: ProjectScope) => {
    scope = message;
    data.port.postMessage("ok");
  });
  data.port.unref();
};

/**
 * The Kiln packages (and their subpaths), from anywhere, are kiln-run's own:
 * a project that imports the SDK runs without installing or publishing it,
 * and its ObjectRefs and errors are the executor's. A bare import from the
 * project's files is looked up first in the dependencies kiln-run installed
 * for the session, then as Node would.
 */
export const resolve: ResolveHook = async (specifier, context, nextResolve) => {
  if (isProvided(specifier)) return nextResolve(specifier, { ...context, parentURL: providedParentURL });
  const current = scope;
  if (current?.depsParentURL && isBare(specifier) && context.parentURL?.startsWith(current.appDirURL)) {
    try {
      return await nextResolve(specifier, { ...context, parentURL: current.depsParentURL });
    } catch (err) {
      if ((err as { code?: unknown }).code !== "ERR_MODULE_NOT_FOUND") throw err;
    }
  }
  return nextResolve(specifier, context);
};

/** `lodash`, `@scope/pkg/sub`: not relative, absolute, a URL (`node:fs`) or a package import (`#x`). */
export function isBare(specifier: string): boolean {
  return !/^[./#]/.test(specifier) && !/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(specifier);
}
