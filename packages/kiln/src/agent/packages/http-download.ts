import * as http from "node:http";
import * as https from "node:https";
import type { TlsClientOptions } from "@kiln/protocol/transport";

export interface HttpGetOptions {
  headers?: Record<string, string>;
  /** For https: the CA to verify the server with and a client certificate; only ever sent to `url`'s origin. */
  tls?: TlsClientOptions;
  /** Longest silence allowed: connecting, waiting for the response, and between body chunks. */
  idleTimeoutMs: number;
  signal: AbortSignal;
  /** Redirects (to http or https only) followed before giving up; 0 for none. */
  maxRedirects: number;
}

const ERROR_BODY_BYTES = 4096;

/**
 * GETs `url` and resolves with the 200 response, its body not yet read. A
 * socket silent for `idleTimeoutMs` (also later, while the body streams) fails
 * the request with a message saying so; any other status fails with the status
 * and the start of the body (the `message` of a JSON error body).
 *
 * @example
 * const res = await httpGet(new URL("http://127.0.0.1:8080/app.tgz"), { idleTimeoutMs: 10_000, signal, maxRedirects: 5 });
 * await pipeline(res, fs.createWriteStream("app.tgz"));
 */
export function httpGet(url: URL, o: HttpGetOptions): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const get = url.protocol === "https:" ? https.get : http.get;
    let response: http.IncomingMessage | undefined;
    // agent: false, so no pooled keep-alive socket outlives the download.
    const options = { headers: o.headers, timeout: o.idleTimeoutMs, signal: o.signal, agent: false, ...o.tls };
    const req = get(url, options, (res) => {
      response = res;
      const status = res.statusCode ?? 0;
      if (status === 200) return resolve(res);
      const location = res.headers.location;
      if (status >= 300 && status < 400 && location && o.maxRedirects > 0) {
        res.resume();
        req.destroy();
        return resolve(followRedirect(url, location, o));
      }
      void errorDetail(res).then((detail) =>
        reject(new Error(`HTTP ${status} ${res.statusMessage ?? ""}`.trimEnd() + detail)),
      );
    });
    req.on("timeout", () => {
      const err = new Error(
        `timed out: no data from ${url.host} for ${o.idleTimeoutMs} ms (host unreachable or stalled)`,
      );
      // Once the body streams, its reader should see this rather than a bare "aborted".
      response?.destroy(err);
      req.destroy(err);
    });
    req.on("error", reject);
  });
}

async function followRedirect(from: URL, location: string, o: HttpGetOptions): Promise<http.IncomingMessage> {
  const to = new URL(location, from);
  if (to.protocol !== "http:" && to.protocol !== "https:")
    throw new Error(`redirected to ${to.protocol} URL, only http and https redirects are followed`);
  // Credentials meant for one origin are not handed to another.
  const sameOrigin = to.origin === from.origin;
  return httpGet(to, {
    ...o,
    headers: sameOrigin ? o.headers : undefined,
    tls: sameOrigin ? o.tls : undefined,
    maxRedirects: o.maxRedirects - 1,
  });
}

/** `: <message>` from a JSON error body, else the start of a text body; "" if there is nothing useful. */
async function errorDetail(res: http.IncomingMessage): Promise<string> {
  let body = "";
  try {
    for await (const chunk of res) {
      body += (chunk as Buffer).toString("utf8");
      if (body.length >= ERROR_BODY_BYTES) break;
    }
  } catch {
    // Whatever arrived is enough for a message.
  }
  res.destroy();
  try {
    const parsed = JSON.parse(body) as { code?: unknown; message?: unknown };
    if (typeof parsed.message === "string")
      return `: ${typeof parsed.code === "string" ? `${parsed.code}: ` : ""}${parsed.message}`;
  } catch {
    // Not JSON.
  }
  const text = body.trim().slice(0, 200);
  return text ? `: ${text}` : "";
}
