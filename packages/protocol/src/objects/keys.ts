import { InvalidArgumentError } from "../errors.js";
import { validateName } from "../validation.js";

/**
 * Object cache keys and prefixes, checked the same way by the cache server
 * and the SDK so a key the client accepts is a key the server accepts.
 * A key is `<app>/<session>/<id>`; every component follows validateName's
 * rule (1–253 chars of [A-Za-z0-9._-], no leading "." or "-", no "..").
 */

/** Splits `value` into components, rejecting traversal and malformed paths before the per-component rule. */
function components(field: string, value: string): string[] {
  if (value.length === 0) throw new InvalidArgumentError(field, "must not be empty");
  if (value.startsWith("/")) throw new InvalidArgumentError(field, `"${value}" must not be an absolute path`);
  if (value.includes("\\")) throw new InvalidArgumentError(field, `"${value}" must not contain a backslash`);
  const parts = value.split("/");
  if (parts.some((p) => p === ""))
    throw new InvalidArgumentError(field, `"${value}" must not contain an empty component ("a//b" or a trailing "/")`);
  for (const p of parts) {
    if (p.includes("..")) throw new InvalidArgumentError(field, `"${value}" must not contain ".."`);
    validateName(field, p);
  }
  return parts;
}

function expectCount(field: string, value: string, parts: string[], counts: number[], shape: string): string[] {
  if (!counts.includes(parts.length))
    throw new InvalidArgumentError(field, `"${value}" must be ${shape} (got ${parts.length} components)`);
  return parts;
}

/**
 * Checks an object key `<app>/<session>/<id>` and returns it.
 *
 * @example
 * validateObjectKey("my-app/s1/result")  // "my-app/s1/result"
 * validateObjectKey("my-app/../etc")     // throws InvalidArgumentError: key: "my-app/../etc" must not contain ".."
 */
export function validateObjectKey(key: string, field = "key"): string {
  expectCount(field, key, components(field, key), [3], "<app>/<session>/<id>");
  return key;
}

/**
 * Checks an object prefix `<app>/<session>` (where a put assigns a new id) and returns it.
 *
 * @example
 * validateObjectPrefix("my-app/s1") // "my-app/s1"
 */
export function validateObjectPrefix(prefix: string, field = "prefix"): string {
  expectCount(field, prefix, components(field, prefix), [2], "<app>/<session>");
  return prefix;
}

/**
 * Checks a list prefix: `<app>` or `<app>/<session>`.
 *
 * @example
 * validateListPrefix("my-app") // "my-app"
 */
export function validateListPrefix(prefix: string, field = "prefix"): string {
  expectCount(field, prefix, components(field, prefix), [1, 2], "<app> or <app>/<session>");
  return prefix;
}
