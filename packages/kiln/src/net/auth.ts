import { InvalidArgumentError, type KilnError } from "@kiln/protocol";
import { timingSafeEqual } from "node:crypto";
import type * as http from "node:http";

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** Whether `host` only accepts connections from this machine (the rule for running without a token). */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.test(host);
}

/**
 * Refuses to listen beyond loopback with nobody checked: such a listener
 * needs the token, or mutual TLS (a client certificate from `clientCa` is
 * required of every connection).
 */
export function checkExposure(host: string, token: string | undefined, clientCa: string | undefined): void {
  if (isLoopbackHost(host) || token || clientCa !== undefined) return;
  throw new InvalidArgumentError(
    "host",
    `listening on ${host} (beyond loopback) requires a token (--token or KILN_TOKEN) or client certificates (--tls-client-ca)`,
  );
}

/**
 * The check every request of a server passes first, from its headers and path alone, before any of
 * its body is read: the refusal to answer with (UNAUTHENTICATED for an unknown credential,
 * PERMISSION_DENIED for a role that may not call the route), or undefined to let it in. What each
 * credential may do lives in net/credentials.ts and, for the control plane's methods, in
 * control/api/call-scope.ts.
 */
export type Admit = (headers: http.IncomingHttpHeaders, path: string, peer: Peer) => KilnError | undefined;

/** What the connection says about the caller, beside its headers. */
export interface Peer {
  /** It presented a client certificate signed by the server's client CA (mutual TLS). */
  certified: boolean;
}

/**
 * A constant-time check of an `authorization` header against `Bearer <token>`.
 *
 * @example
 * const ok = bearerTokenCheck("s3cret");
 * ok(req.headers.authorization) // true only for "Bearer s3cret"
 */
export function bearerTokenCheck(token: string): (authorization: string | undefined) => boolean {
  const expected = Buffer.from(`Bearer ${token}`);
  return (authorization) => {
    const given = Buffer.from(authorization ?? "");
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
}
