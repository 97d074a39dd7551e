import { timingSafeEqual } from "node:crypto";

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** Whether `host` only accepts connections from this machine (the rule for running without a token). */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.test(host);
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
