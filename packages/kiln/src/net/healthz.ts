import type * as http from "node:http";

/** Every Kiln server answers `GET /healthz` with a {@link HealthzBody}. */
export const HEALTHZ_PATH = "/healthz";

/** Which Kiln server answered: how a client pointed at the wrong port can say what is there. */
export const KilnServer = {
  ControlPlane: "kiln-control-plane",
  ObjectCache: "kiln-object-cache",
} as const;
export type KilnServer = (typeof KilnServer)[keyof typeof KilnServer];

/** What `/healthz` answers: liveness and identity for anyone, `details` only for a caller with the token. */
export interface HealthzBody {
  status: "ok";
  server: KilnServer;
  details?: Record<string, unknown>;
}

interface HealthzRequest {
  readonly url?: string | undefined;
  readonly method?: string | undefined;
  readonly headers: http.IncomingHttpHeaders;
}

interface HealthzResponse {
  writeHead(status: number, headers: http.OutgoingHttpHeaders): unknown;
  end(body: string): unknown;
}

/**
 * Answers `/healthz` for `server` and returns true, or returns false for any
 * other path. Liveness needs no token, so a load balancer or `kiln status`
 * can always ask; what the server holds (`details()`) is shown only to a
 * caller `showsDetails` accepts (the cluster token's).
 *
 * @example
 * const healthz = healthzResponder(KilnServer.ObjectCache, (h) => isAdmin(h.authorization), () => ({ backend: "fs" }));
 * http.createServer((req, res) => healthz(req, res) || routes(req, res));
 */
export function healthzResponder(
  server: KilnServer,
  showsDetails: (headers: http.IncomingHttpHeaders) => boolean,
  details: () => Record<string, unknown>,
): (req: HealthzRequest, res: HealthzResponse) => boolean {
  return (req, res) => {
    const url = req.url ?? "/";
    if (url !== HEALTHZ_PATH && !url.startsWith(`${HEALTHZ_PATH}?`)) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
      res.end(`method ${req.method} is not allowed here (allowed: GET, HEAD)\n`);
      return true;
    }
    const body: HealthzBody = { status: "ok", server };
    if (showsDetails(req.headers)) body.details = details();
    const text = `${JSON.stringify(body)}\n`;
    res.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
      "cache-control": "no-store",
    });
    res.end(req.method === "HEAD" ? "" : text);
    return true;
  };
}
