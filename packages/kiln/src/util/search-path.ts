import * as path from "node:path";

/**
 * A PATH-style list with `dirs` first: `a:b:<rest>`, or `a:b` when rest is empty.
 *
 * @example
 * const env = { PATH: prependPath(["/opt/app/bin"], process.env.PATH) };
 */
export function prependPath(dirs: readonly string[], rest: string | undefined): string {
  return [...dirs, ...(rest ? [rest] : [])].join(path.delimiter);
}
