import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { toConnectError } from "@kiln/sdk/internal";
import { timingSafeEqual } from "node:crypto";

/** Rejects every request of every API without the cluster token. */
export function requireToken(token: string): Interceptor {
  const expected = Buffer.from(`Bearer ${token}`);
  return (next) => async (req) => {
    const given = Buffer.from(req.header.get("authorization") ?? "");
    if (given.length !== expected.length || !timingSafeEqual(given, expected))
      throw new ConnectError("missing or invalid token (send `authorization: Bearer <token>`)", Code.Unauthenticated);
    return next(req);
  };
}

/** Turns Kiln's typed errors thrown by handlers into gRPC statuses, including errors raised mid-stream. */
export function translateErrors(): Interceptor {
  return (next) => async (req) => {
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const source = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* source;
          } catch (err) {
            throw toConnectError(err);
          }
        })(),
      };
    } catch (err) {
      throw toConnectError(err);
    }
  };
}
