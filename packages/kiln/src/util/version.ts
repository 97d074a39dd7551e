import { readFileSync } from "node:fs";

let cached: string | undefined;

/**
 * This Kiln's version, from packages/kiln/package.json (the same relative
 * path from src/ under tsx and from dist/ when built).
 *
 * @example
 * console.log(`kiln ${kilnVersion()}`); // kiln 0.1.0
 */
export function kilnVersion(): string {
  cached ??= (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string })
    .version;
  return cached;
}
