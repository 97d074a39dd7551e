import { InvalidArgumentError } from "@kiln/protocol";
import { timingSafeEqual } from "node:crypto";

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
