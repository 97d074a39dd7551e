import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { bearerTokenCheck } from "./auth.js";

/** Rejects every request of every API without the cluster token. */
export function requireToken(token: string): Interceptor {
  const tokenMatches = bearerTokenCheck(token);
  return (next) => async (req) => {
    if (!tokenMatches(req.header.get("authorization") ?? undefined)) throw tokenRefusal();
    return next(req);
  };
}

/** The error a request without the cluster token gets, on every API. */
export function tokenRefusal(): ConnectError {
  return new ConnectError("missing or invalid token (send `authorization: Bearer <token>`)", Code.Unauthenticated);
}
