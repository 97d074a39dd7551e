import type { Interceptor } from "@connectrpc/connect";
import { toConnectError } from "../errors.js";

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
