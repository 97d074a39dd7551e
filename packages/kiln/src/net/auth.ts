import { UnauthenticatedError } from "@kiln/protocol";
import { timingSafeEqual } from "node:crypto";
import type * as http from "node:http";

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** Whether `host` only accepts connections from this machine (the rule for running without a token). */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.test(host);
}

/** Who a request comes from, once its credential checked out. Today one role: the cluster token's. */
export interface Principal {
  readonly role: "admin";
}

/** A request's credential checked: who sent it, or the refusal to answer with. */
export type Authentication =
  | { readonly principal: Principal; readonly refusal?: undefined }
  | { readonly principal?: undefined; readonly refusal: UnauthenticatedError };

/**
 * Checks a request's credential from its headers alone, before any of its body is read. Every port
 * and route of every Kiln server asks this one function, so what a credential may be lives here.
 */
export type Authenticate = (headers: http.IncomingHttpHeaders) => Authentication;

const ADMIN: Authentication = { principal: { role: "admin" } };

/**
 * The {@link Authenticate} of a server with cluster token `token` (`authorization: Bearer <token>`,
 * compared in constant time); with no token, everyone is admin (loopback only, see isLoopbackHost).
 *
 * @example
 * const authenticate = authenticator("s3cret");
 * authenticate(req.headers).refusal // undefined only for "Bearer s3cret"
 */
export function authenticator(token: string | undefined): Authenticate {
  if (token === undefined) return () => ADMIN;
  const expected = Buffer.from(`Bearer ${token}`);
  const refused: Authentication = {
    refusal: new UnauthenticatedError("missing or invalid token (send `authorization: Bearer <token>`)"),
  };
  return (headers) => {
    const given = Buffer.from(headers.authorization ?? "");
    return given.length === expected.length && timingSafeEqual(given, expected) ? ADMIN : refused;
  };
}
