import { PermissionDeniedError } from "@kiln/protocol";
import type { Principal } from "../net/credentials.js";

/** What one cache request touches: the application its key or prefix is under, and whether it changes anything. */
export interface ObjectAccess {
  /** The key's or prefix's first component (`<app>/<session>/<id>`); undefined for every application (a list without prefix). */
  application: string | undefined;
  write: boolean;
  /** How the refusal names the request, e.g. `PUT pi/s1/x`. */
  what: string;
}

/**
 * Refuses a request outside the caller's scope: the node token only reads
 * (agents download packages and objects); a task credential reads and writes
 * its own application's objects only. The admin token may do everything.
 *
 * @example
 * checkObjectAccess({ role: "node" }, { application: "pi", write: true, what: "PUT pi/s/x" }) // throws PERMISSION_DENIED
 */
export function checkObjectAccess(principal: Principal, access: ObjectAccess): void {
  if (principal.role === "admin") return;
  if (principal.role === "node") {
    if (access.write || access.application === undefined)
      throw new PermissionDeniedError(access.what, "the node token may only read objects");
    return;
  }
  if (access.application !== principal.application)
    throw new PermissionDeniedError(
      access.what,
      `this task credential is scoped to application "${principal.application}" (keys under ${principal.application}/)`,
    );
}
