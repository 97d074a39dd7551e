import { ClientCertificateRefusedError, ErrorCode, KilnError } from "@kiln/protocol";
import * as http from "node:http";
import * as http2 from "node:http2";
import { speaksTls } from "@kiln/protocol/transport";
import { HEALTHZ_PATH, KilnServer, type HealthzBody } from "../net/healthz.js";

/** What answered at an endpoint: a Kiln server (and over which HTTP), or another HTTP server. */
export type ServerFound =
  | { server: KilnServer; protocol: "HTTP/1.1" | "HTTP/2"; details?: Record<string, unknown> }
  | { server: "other"; protocol: "HTTP/1.1" | "HTTP/2"; status: number };

const PROBE_TIMEOUT_MS = 2_000;
const MAX_BODY_BYTES = 64 * 1024;

/**
 * Asks `GET /healthz` at `endpoint` in plain HTTP, first HTTP/1.1, then
 * HTTP/2 without TLS (the control plane's gRPC port speaks only that), and
 * says what answered; undefined when nothing HTTP did. Never throws.
 *
 * @example
 * await identifyServer("http://127.0.0.1:7422", undefined) // { server: "kiln-object-cache", protocol: "HTTP/1.1" }
 */
export async function identifyServer(endpoint: string, token: string | undefined): Promise<ServerFound | undefined> {
  const url = new URL(endpoint);
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const reply =
    (await getHttp1(url, headers).catch(() => undefined)) ?? (await getHttp2(url, headers).catch(() => undefined));
  if (!reply) return undefined;
  try {
    const body = JSON.parse(reply.body) as Partial<HealthzBody>;
    if (body.server === KilnServer.ControlPlane || body.server === KilnServer.ObjectCache)
      return { server: body.server, protocol: reply.protocol, ...(body.details ? { details: body.details } : {}) };
  } catch {
    // not JSON: not a Kiln server
  }
  return { server: "other", protocol: reply.protocol, status: reply.status };
}

interface Reply {
  protocol: "HTTP/1.1" | "HTTP/2";
  status: number;
  body: string;
}

function getHttp1(url: URL, headers: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      // An IPv6 literal's hostname keeps its brackets in a URL, but not as a host to dial.
      {
        host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
        port: url.port || 80,
        path: HEALTHZ_PATH,
        headers,
        timeout: PROBE_TIMEOUT_MS,
      },
      (res) =>
        readBody(res).then((body) => resolve({ protocol: "HTTP/1.1", status: res.statusCode ?? 0, body }), reject),
    );
    req.once("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
  });
}

function getHttp2(url: URL, headers: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${url.host}`);
    const timer = setTimeout(() => session.destroy(new Error("timed out")), PROBE_TIMEOUT_MS);
    session.on("error", reject); // not once: a session may emit more than one error as it dies
    session.once("close", () => clearTimeout(timer));
    const req = session.request({ ":path": HEALTHZ_PATH, ...headers });
    req.on("error", reject);
    req.once("response", (h) => {
      readBody(req).then((body) => resolve({ protocol: "HTTP/2", status: Number(h[":status"] ?? 0), body }), reject);
    });
    req.once("close", () => {
      // A stream the peer ended without an answer (a TLS server's alert read as HTTP/2) settles the probe too.
      reject(new Error("the stream closed without a response"));
      session.close();
    });
    req.end();
  });
}

async function readBody(stream: AsyncIterable<Buffer>): Promise<string> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of stream) {
    length += chunk.length;
    if (length > MAX_BODY_BYTES) break;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Whether `err` (or a cause) is a TLS failure, such as `https://` at a plain-HTTP port ("wrong version number"). */
function isTlsFailure(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code: unknown = (e as NodeJS.ErrnoException).code;
    if (
      (typeof code === "string" && code.startsWith("ERR_SSL_")) ||
      /SSL routines|wrong version number/.test(e.message)
    )
      return true;
  }
  return false;
}

/**
 * Whether `err` may mean that something other than `expected` answered: a
 * protocol or TLS failure, or an HTTP status without Kiln's error body —
 * not a refusal a Kiln server sent with its own code.
 */
function mayBeWrongServer(err: unknown, expected: KilnServer): boolean {
  // The right server, speaking TLS, that wants a client certificate: its refusal already says so.
  if (err instanceof ClientCertificateRefusedError) return false;
  if (isTlsFailure(err)) return true;
  if (!(err instanceof KilnError)) return false;
  if (expected === KilnServer.ObjectCache)
    return err.code === ErrorCode.Unavailable || / answered HTTP \d+$/.test(err.message);
  // A TLS server's alert, read as HTTP/2, comes out as a cancelled stream.
  return err.code === ErrorCode.Internal || err.code === ErrorCode.Unavailable || err.code === ErrorCode.Cancelled;
}

const NAMES: Record<KilnServer, string> = {
  [KilnServer.ControlPlane]: "the control plane",
  [KilnServer.ObjectCache]: "the object cache",
};

/**
 * When a call to `expected` at `endpoint` failed with `err` because
 * something else listens there (the other Kiln server, the control plane's
 * JSON port, a non-Kiln server, or plain HTTP where `https://` was used),
 * says what is there and what to try; otherwise undefined.
 *
 * @example
 * await explainWrongServer("http://127.0.0.1:7422", KilnServer.ControlPlane, err, token)
 * // "port 7422 is Kiln's object cache, not the control plane; the control plane is usually at http://127.0.0.1:7420 (--endpoint)"
 */
export async function explainWrongServer(
  endpoint: string,
  expected: KilnServer,
  err: unknown,
  token: string | undefined,
): Promise<string | undefined> {
  if (!mayBeWrongServer(err, expected)) return undefined;
  const url = new URL(endpoint);
  const port = `port ${url.port || (url.protocol === "https:" ? 443 : 80)}`;
  if (url.protocol === "http:" && (await speaksTls(url)))
    return `${port} speaks TLS: use https://${url.host} (and --tls-ca or KILN_TLS_CA with the CA that signed its certificate)`;
  const found = await identifyServer(endpoint, token);
  const what = found ? describeServer(found) : undefined;
  if (url.protocol === "https:" && isTlsFailure(err))
    return `${port} does not speak TLS${what ? ` (it is ${what}, in plain HTTP)` : ""}; try http://${url.host}`;
  if (!found) return undefined;
  const flag = expected === KilnServer.ControlPlane ? "--endpoint" : "--cache-endpoint";
  if (found.server === "other") return `${port} is ${what}; point ${flag} at ${NAMES[expected]}`;
  if (found.server === expected) {
    // The control plane's JSON port answers /healthz too, but gRPC clients need its HTTP/2 port.
    if (expected !== KilnServer.ControlPlane || found.protocol === "HTTP/2") return undefined;
    const grpc = detail(found, "endpoint");
    return `${port} is the control plane's JSON/HTTP1.1 port; clients use its gRPC port, ${grpc || `usually ${withPort(url, -1)}`} (${flag})`;
  }
  const advertised = detail(found, "cacheEndpoint");
  const where =
    expected === KilnServer.ObjectCache
      ? advertised || withPort(url, found.protocol === "HTTP/2" ? 2 : 1)
      : withPort(url, -2);
  return `${port} is ${what}, not ${NAMES[expected]}; ${NAMES[expected]} is ${advertised ? "at" : "usually at"} ${where} (${flag})`;
}

/** A string that a Kiln server's /healthz details hold (shown to a caller with the token), else "". */
function detail(found: ServerFound, name: string): string {
  const value = found.server === "other" ? undefined : found.details?.[name];
  return typeof value === "string" ? value : "";
}

/**
 * What `found` is, in words.
 *
 * @example
 * describeServer({ server: "kiln-object-cache", protocol: "HTTP/1.1" }) // "Kiln's object cache"
 */
export function describeServer(found: ServerFound): string {
  if (found.server === "other")
    return `an ${found.protocol} server that is not Kiln's (GET ${HEALTHZ_PATH}: status ${found.status})`;
  if (found.server === KilnServer.ObjectCache) return "Kiln's object cache";
  return found.protocol === "HTTP/2" ? "Kiln's control plane" : "Kiln's control plane (its JSON/HTTP1.1 port)";
}

/** `url` with its port moved by `delta`, as `http://host:port` (how `kiln up` lays out its ports). */
function withPort(url: URL, delta: number): string {
  return `http://${url.hostname}:${Number(url.port || 80) + delta}`;
}
