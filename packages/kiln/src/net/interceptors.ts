import type { ConnectError, Interceptor } from "@connectrpc/connect";

/**
 * The check every call of every API passes first: `admit` decides from the
 * `authorization` header and the method's path (`/package.Service/Method`)
 * alone, and returns the error that refuses the call, or undefined.
 *
 * @example
 * connectNodeAdapter({ routes, interceptors: [admitCalls((auth, path) => guard.admit(auth, path))] });
 */
export function admitCalls(
  admit: (authorization: string | undefined, path: string) => ConnectError | undefined,
): Interceptor {
  return (next) => async (req) => {
    const refusal = admit(req.header.get("authorization") ?? undefined, `/${req.service.typeName}/${req.method.name}`);
    if (refusal) throw refusal;
    return next(req);
  };
}
