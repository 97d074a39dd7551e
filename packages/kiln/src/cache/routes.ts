import {
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnauthenticatedError,
  validateListPrefix,
  validateObjectKey,
  validateObjectPrefix,
  validateName,
} from "@kiln/protocol";
import {
  BATCH_CONTENT_TYPE,
  BATCH_PATH,
  CacheHeader,
  decodeBatchRequest,
  encodeBatchResponse,
  MAX_BATCH_REQUEST_BYTES,
  MAX_BATCHED_RESPONSE_BYTES,
  SEND_ALONE,
  type SubResponse,
} from "@kiln/protocol/cache";
import { randomBytes } from "node:crypto";
import type * as http from "node:http";
import type { Credentials, Principal } from "../net/credentials.js";
import { isCertified } from "../net/tls.js";
import { healthzResponder, KilnServer } from "../net/healthz.js";
import { BufferedRequest, BufferedResponse, type RouteRequest, type RouteResponse } from "./exchange.js";
import { BodyTooLargeError, MethodNotAllowedError, sendError } from "./http-errors.js";
import { checkObjectAccess } from "./object-scope.js";
import type { RevokedSessions } from "./revocations.js";
import { sendObject } from "./read-response.js";
import type { ObjectStat } from "./storage/backend.js";
import type { ObjectStore, WriteRequest } from "./storage/object-store.js";

export interface RouteContext {
  store: ObjectStore;
  /** Advertised in every ObjectRef; known once the server listens. */
  endpoint: string;
  /** Who may do what: the cluster token, the node token and task credentials. */
  credentials: Credentials;
  /** Sessions whose task credentials are refused before their expiry (PUT /v1/revocations/<session>). */
  revoked: RevokedSessions;
  /** Mutual TLS for nodes: the node token is accepted only with a verified client certificate. */
  nodesNeedCertificates?: boolean;
  log(line: string): void;
}

const DEFAULT_LIST_LIMIT = 1000;
const MAX_LIST_LIMIT = 10_000;
const OBJECTS = "/v1/objects/";
const STAT = "/v1/stat/";
const REVOCATIONS = "/v1/revocations/";

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/**
 * The cache's HTTP API (see docs/cache-api.md): auth, routing, headers and
 * JSON; storage semantics live in ObjectStore.
 *
 * @example
 * http.createServer(cacheRoutes({ store, endpoint: "http://127.0.0.1:7422", credentials: new Credentials({}), revoked: new RevokedSessions(), log: console.log }));
 */
export function cacheRoutes(ctx: RouteContext): Handler {
  const healthz = healthzResponder(
    KilnServer.ObjectCache,
    (h) => ctx.credentials.isAdmin(h.authorization),
    () => healthDetails(ctx),
  );
  return (req, res) => {
    if (healthz(req, res)) return;
    // Decided from the header alone, before any body is read.
    const auth = ctx.credentials.authenticate(req.headers.authorization);
    const refusal =
      "refusal" in auth
        ? auth.refusal
        : auth.principal.role === "task" && ctx.revoked.has(auth.principal.sessionId)
          ? `the task credential of session "${auth.principal.sessionId}" ended when the session closed`
          : auth.principal.role === "node" && ctx.nodesNeedCertificates && !isCertified(req)
            ? "this cache requires a client certificate signed by its --tls-client-ca with the node token " +
              "(give the agent --tls-client-cert and --tls-client-key)"
            : undefined;
    if (refusal === undefined && "principal" in auth) return handle(ctx, req, res, auth.principal);
    sendError(req, res, new UnauthenticatedError(refusal), ctx.log);
  };
}

function handle(ctx: RouteContext, req: RouteRequest, res: RouteResponse, principal: Principal): void {
  try {
    route(ctx, req, res, principal)?.catch((err: unknown) => sendError(req, res, err, ctx.log));
  } catch (err) {
    sendError(req, res, err, ctx.log);
  }
}

function route(ctx: RouteContext, req: RouteRequest, res: RouteResponse, principal: Principal): Promise<void> | void {
  const url = req.url ?? "/";
  const q = url.indexOf("?");
  const pathname = q < 0 ? url : url.slice(0, q);
  const method = req.method ?? "GET";
  /** Every route that names keys checks the caller's scope before it touches the store. */
  const access = (path: string, write: boolean, application = path.split("/")[0]) =>
    checkObjectAccess(principal, { application, write, what: `${method} ${pathname}` });
  if (pathname.startsWith(OBJECTS)) {
    const path = decodePath(pathname.slice(OBJECTS.length));
    access(path, method !== "GET" && method !== "HEAD");
    return objectRoute(ctx, req, res, method, path);
  }
  if (pathname.startsWith(STAT)) {
    allow(method, ["GET"]);
    const key = validateObjectKey(decodePath(pathname.slice(STAT.length)));
    access(key, false);
    return sendJson(res, 200, ctx.store.stat(key) ?? notFound(key));
  }
  if (pathname === "/v1/list") {
    allow(method, ["GET"]);
    const params = new URLSearchParams(q < 0 ? "" : url.slice(q + 1));
    const prefix = params.get("prefix") ?? "";
    access(prefix, false, prefix === "" ? undefined : prefix.split("/")[0]);
    return list(ctx, res, params);
  }
  if (pathname === BATCH_PATH) {
    allow(method, ["POST"]);
    return batch(ctx, req, res, principal);
  }
  if (pathname.startsWith(REVOCATIONS)) {
    allow(method, ["PUT"]);
    const sessionId = validateName("session", decodePath(pathname.slice(REVOCATIONS.length)));
    if (principal.role !== "admin")
      throw new PermissionDeniedError(`${method} ${pathname}`, "only the cluster token revokes task credentials");
    ctx.revoked.revoke(sessionId);
    ctx.log(`task credentials of session ${sessionId} revoked`);
    return sendJson(res, 200, { revoked: sessionId });
  }
  if (pathname === "/v1/health") {
    allow(method, ["GET"]);
    return sendJson(res, 200, { ok: true, ...healthDetails(ctx) });
  }
  throw new NotFoundError("route", `${method} ${pathname}`);
}

function healthDetails(ctx: RouteContext): { backend: string; endpoint: string } {
  return { backend: ctx.store.kind, endpoint: ctx.endpoint };
}

function objectRoute(
  ctx: RouteContext,
  req: RouteRequest,
  res: RouteResponse,
  method: string,
  path: string,
): Promise<void> | void {
  const components = path.split("/").length;
  switch (method) {
    case "GET":
    case "HEAD": {
      const key = validateObjectKey(path);
      const opened = ctx.store.open(key) ?? notFound(key);
      return sendObject(req, res, opened.object, opened.release);
    }
    case "PUT":
      if (components === 2) return put(ctx, req, res, newKey(path), 0);
      return put(ctx, req, res, validateObjectKey(path));
    case "POST":
      return put(ctx, req, res, newKey(path), 0);
    case "PATCH":
      return patch(ctx, req, res, validateObjectKey(path));
    case "DELETE":
      return remove(ctx, res, path, components);
    default:
      throw new MethodNotAllowedError(method, ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]);
  }
}

/** Runs each sub-request through the same routes as a request of its own, at once, and answers in order. */
async function batch(ctx: RouteContext, req: RouteRequest, res: RouteResponse, principal: Principal): Promise<void> {
  if (Number(req.headers["content-length"] ?? 0) > MAX_BATCH_REQUEST_BYTES) throw batchTooLarge();
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of req) {
    length += chunk.length;
    if (length > MAX_BATCH_REQUEST_BYTES) throw batchTooLarge();
    chunks.push(chunk);
  }
  const items = decodeBatchRequest(Buffer.concat(chunks, length));
  const replies = await Promise.all(
    items.map(async (item): Promise<SubResponse> => {
      const sub = new BufferedResponse(MAX_BATCHED_RESPONSE_BYTES);
      handle(ctx, new BufferedRequest(item.method, item.path, item.headers, item.body), sub, principal);
      await sub.done;
      // Too large, or cut off after its headers: the client sends it alone and gets the real answer.
      if (!sub.writableFinished) return { status: SEND_ALONE, headers: {}, body: new Uint8Array(0) };
      return { status: sub.status, headers: sub.headers, body: sub.body };
    }),
  );
  const body = encodeBatchResponse(replies);
  res.writeHead(200, { "content-type": BATCH_CONTENT_TYPE, "content-length": body.byteLength });
  res.end(body);
}

async function put(
  ctx: RouteContext,
  req: RouteRequest,
  res: RouteResponse,
  key: string,
  ifVersion?: number,
): Promise<void> {
  const request = writeRequest(req, key);
  const { stat, created } = await ctx.store.put(ifVersion === undefined ? request : { ...request, ifVersion });
  sendRef(ctx, res, created ? 201 : 200, stat);
}

async function patch(ctx: RouteContext, req: RouteRequest, res: RouteResponse, key: string) {
  sendRef(ctx, res, 200, await ctx.store.patch(writeRequest(req, key)));
}

async function remove(ctx: RouteContext, res: RouteResponse, path: string, components: number): Promise<void> {
  if (path.endsWith("/*")) {
    const app = path.slice(0, -2);
    if (app.includes("/")) throw new InvalidArgumentError("prefix", `"${path}": the wildcard form is <app>/*`);
    validateListPrefix(app);
    return sendJson(res, 200, { deleted: await ctx.store.deletePrefix(`${app}/`) });
  }
  if (components === 2)
    return sendJson(res, 200, { deleted: await ctx.store.deletePrefix(`${validateObjectPrefix(path)}/`) });
  await ctx.store.delete(validateObjectKey(path));
  sendJson(res, 200, { deleted: 1 });
}

function list(ctx: RouteContext, res: RouteResponse, params: URLSearchParams): void {
  const prefix = validateListPrefix(params.get("prefix") ?? "");
  const limitText = params.get("limit") ?? String(DEFAULT_LIST_LIMIT);
  const limit = Number(limitText);
  if (!/^\d+$/.test(limitText) || limit < 1 || limit > MAX_LIST_LIMIT)
    throw new InvalidArgumentError("limit", `"${limitText}" must be a whole number from 1 to ${MAX_LIST_LIMIT}`);
  const afterText = params.get("after");
  const after = afterText === null ? undefined : validateObjectKey(afterText, "after");
  const found = ctx.store.list(`${prefix}/`, after, limit + 1);
  const objects = found.slice(0, limit);
  sendJson(res, 200, found.length > limit ? { objects, next: objects[limit - 1]!.key } : { objects });
}

function writeRequest(req: RouteRequest, key: string): WriteRequest {
  const length = req.headers["content-length"];
  const sha256 = req.headers[CacheHeader.sha256];
  const ifVersion = req.headers[CacheHeader.ifVersion];
  if (typeof sha256 === "string" && !/^[0-9a-fA-F]{64}$/.test(sha256))
    throw new InvalidArgumentError(CacheHeader.sha256, `"${sha256}" is not 64 hex digits`);
  if (typeof ifVersion === "string" && !/^\d+$/.test(ifVersion))
    throw new InvalidArgumentError(CacheHeader.ifVersion, `"${ifVersion}" is not a version number`);
  return {
    key,
    body: req.body ?? req,
    contentLength: length === undefined ? undefined : Number(length),
    sha256: typeof sha256 === "string" ? sha256.toLowerCase() : undefined,
    ifVersion: typeof ifVersion === "string" ? Number(ifVersion) : undefined,
  };
}

/** A fresh key under a prefix: 24 hex characters, url-safe and valid as a key component. */
function newKey(prefix: string): string {
  return `${validateObjectPrefix(prefix)}/${randomBytes(12).toString("hex")}`;
}

/** Percent-decodes the path after the route, refusing an encoded "/" or "\\" so one component never becomes two. */
function decodePath(raw: string): string {
  if (!raw.includes("%")) return raw;
  if (/%2f|%5c/i.test(raw))
    throw new InvalidArgumentError("key", `"${raw}" must not contain a percent-encoded "/" or "\\"`);
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new InvalidArgumentError("key", `"${raw}" is not valid percent-encoding`);
  }
}

function batchTooLarge(): BodyTooLargeError {
  return new BodyTooLargeError(BATCH_PATH, MAX_BATCH_REQUEST_BYTES);
}

function allow(method: string, allowed: string[]): void {
  if (!allowed.includes(method) && !(method === "HEAD" && allowed.includes("GET")))
    throw new MethodNotAllowedError(method, allowed);
}

function notFound(key: string): never {
  throw new NotFoundError("object", key);
}

function sendRef(ctx: RouteContext, res: RouteResponse, status: number, stat: ObjectStat): void {
  // Written by hand on the hot path: keys are validated to [A-Za-z0-9._/-] and the sha is hex, so only
  // the endpoint needs escaping.
  const body = `{"endpoint":${JSON.stringify(ctx.endpoint)},"key":"${stat.key}","version":${stat.version},"size":${stat.size},"sha256":"${stat.sha256}"}`;
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": body.length,
    [CacheHeader.version]: stat.version,
  });
  res.end(body);
}

function sendJson(res: RouteResponse, status: number, value: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    ...headers,
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}
