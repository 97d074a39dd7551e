import * as http from "node:http";
import * as https from "node:https";
import { pipeline, type Readable } from "node:stream";
import {
  ERROR_CODE_HEADER,
  ErrorCode,
  FailedPreconditionError,
  InvalidArgumentError,
  KilnError,
  NotFoundError,
  TimeoutError,
  UnauthenticatedError,
} from "../errors.js";
import { PipelinedPool } from "./pipelined-pool.js";
import type { WholeResponse } from "./response-parser.js";

/**
 * The object cache's HTTP/1.1 client. Small requests (values, stats,
 * lists) go over a pipelined connection pool; streamed uploads and
 * downloads over node:http with a keep-alive agent. Both have an
 * inactivity timeout, map network failures to UNAVAILABLE and turn the
 * cache's error bodies back into KilnErrors.
 */

export type Method = "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE";

export interface CacheRequest {
  method: Method;
  /** Path and query, already safe to send (keys are validated before they get here). */
  path: string;
  headers?: Record<string, string>;
  body?: Uint8Array;
}

export interface StreamRequest {
  method: Method;
  path: string;
  headers?: Record<string, string>;
  /** Piped with backpressure; needs `contentLength`. */
  body?: Readable;
  contentLength?: number;
}

export interface CacheHttpOptions {
  endpoint: string;
  token?: string;
  /** A request fails with TimeoutError when its connection is silent this long (connect, response, body). */
  timeoutMs: number;
  /** Connections for small requests (they are pipelined). Default 4. */
  maxConnections?: number;
}

export type { WholeResponse } from "./response-parser.js";

const DEFAULT_MAX_CONNECTIONS = 4;
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const NETWORK_ERRORS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ECONNABORTED",
]);

/**
 * Sends requests to one object cache endpoint.
 *
 * @example
 * const h = new CacheHttp({ endpoint: "http://127.0.0.1:7422", timeoutMs: 30_000 });
 * const { deleted } = await h.json<{ deleted: number }>({ method: "DELETE", path: "/v1/objects/app/s1" });
 * h.close();
 */
export class CacheHttp {
  readonly endpoint: string;
  private readonly pool: PipelinedPool;
  private readonly agent: http.Agent;
  private readonly streamRequest: typeof http.request;
  private readonly hostname: string;
  private readonly port: number;
  private readonly authorization: string | undefined;
  private readonly timeoutMs: number;

  constructor(options: CacheHttpOptions) {
    const url = new URL(options.endpoint);
    const secure = url.protocol === "https:";
    this.endpoint = options.endpoint;
    this.hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
    this.port = Number(url.port || (secure ? 443 : 80));
    this.authorization = options.token ? `Bearer ${options.token}` : undefined;
    this.timeoutMs = options.timeoutMs;
    this.pool = new PipelinedPool({
      host: this.hostname,
      port: this.port,
      secure,
      ...(this.authorization ? { fixedHeaders: { authorization: this.authorization } } : {}),
      maxConnections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      timeoutMs: options.timeoutMs,
      onTimeout: (req) => new TimeoutError(`${req.method} ${this.endpoint}${req.path}`, this.timeoutMs),
      onNetworkError: (err) => this.networkError(err),
    });
    this.streamRequest = secure ? https.request : http.request;
    this.agent = secure ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  }

  /** Sends a small request and reads the whole reply; a status >= 300 other than 304 rejects with the server's error. */
  async request(spec: CacheRequest): Promise<WholeResponse> {
    const res = await this.pool.request(spec);
    if (res.status >= 300 && res.status !== 304) throw this.errorFrom(res.status, res.headers, res.body);
    return res;
  }

  /** Sends a small request and parses its JSON reply. */
  async json<T>(spec: CacheRequest): Promise<T> {
    const { body } = await this.request(spec);
    try {
      return JSON.parse(body.toString("utf8")) as T;
    } catch {
      throw new KilnError(ErrorCode.Internal, `object cache at ${this.endpoint} sent a reply that is not JSON`);
    }
  }

  /**
   * Resolves once the response headers arrive, its body still to be read
   * (the caller reads or drains it); a status >= 300 rejects with the
   * server's error. The inactivity timeout keeps running while the body
   * streams.
   */
  stream(spec: StreamRequest): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { ...spec.headers };
      if (this.authorization) headers.authorization = this.authorization;
      if (spec.contentLength !== undefined) headers["content-length"] = spec.contentLength;
      const req = this.streamRequest({
        hostname: this.hostname,
        port: this.port,
        method: spec.method,
        path: spec.path,
        headers,
        agent: this.agent,
      });
      let response: http.IncomingMessage | undefined;
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        reject(this.networkError(err));
      };
      req.setTimeout(this.timeoutMs, () => {
        const err = new TimeoutError(`${spec.method} ${this.endpoint}${spec.path}`, this.timeoutMs);
        if (response) response.destroy(err);
        else req.destroy(err);
        fail(err);
      });
      req.on("error", fail);
      req.on("response", (res: http.IncomingMessage) => {
        response = res;
        if (settled) return void res.resume();
        settled = true;
        const status = res.statusCode ?? 0;
        if (status < 300) return resolve(res);
        readAll(res, MAX_ERROR_BODY_BYTES).then(
          (body) => reject(this.errorFrom(status, res.headers, body)),
          () => reject(this.errorFrom(status, res.headers, Buffer.alloc(0))),
        );
      });
      if (spec.body)
        pipeline(spec.body, req, (err) => {
          if (err) fail(err);
        });
      else req.end();
    });
  }

  /** Closes every connection; requests still running fail. */
  close(): void {
    this.pool.close();
    this.agent.destroy();
  }

  private networkError(err: Error): Error {
    if (err instanceof KilnError || !isNetworkError(err)) return err;
    return new KilnError(ErrorCode.Unavailable, `object cache at ${this.endpoint} is unavailable: ${err.message}`, {
      cause: err,
    });
  }

  private errorFrom(status: number, headers: http.IncomingHttpHeaders, raw: Buffer): KilnError {
    let body: { code?: unknown; message?: unknown; field?: unknown } = {};
    try {
      body = JSON.parse(raw.toString("utf8")) as typeof body;
    } catch {
      // Not a Kiln error body (a proxy, or the body was cut): the status says enough.
    }
    const headerCode = headers[ERROR_CODE_HEADER];
    const sent = typeof body.code === "string" ? body.code : typeof headerCode === "string" ? headerCode : undefined;
    const code = isErrorCode(sent) ? sent : codeForStatus(status);
    const message =
      typeof body.message === "string" ? body.message : `object cache at ${this.endpoint} answered HTTP ${status}`;
    return errorFor(code, message, typeof body.field === "string" ? body.field : undefined);
  }
}

/** Reads a stream into one buffer; more than `limit` bytes rejects. */
export function readAll(res: Readable, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    res.on("data", (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) res.destroy(new KilnError(ErrorCode.ResourceExhausted, `reply is over ${limit} bytes`));
      else chunks.push(chunk);
    });
    res.once("end", () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length)));
    res.once("error", reject);
  });
}

function isNetworkError(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return (
    (code !== undefined && NETWORK_ERRORS.has(code)) ||
    err.message === "socket hang up" ||
    err.message.startsWith("connection closed") ||
    err.message.startsWith("bad HTTP response") ||
    err.message === "the client was closed"
  );
}

const ERROR_CODES = new Set<string>(Object.values(ErrorCode));

function isErrorCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && ERROR_CODES.has(code);
}

function codeForStatus(status: number): ErrorCode {
  if (status === 400) return ErrorCode.InvalidArgument;
  if (status === 401 || status === 403) return ErrorCode.Unauthenticated;
  if (status === 404) return ErrorCode.NotFound;
  if (status === 409 || status === 412 || status === 416) return ErrorCode.FailedPrecondition;
  if (status === 413 || status === 507) return ErrorCode.ResourceExhausted;
  if (status === 503) return ErrorCode.Unavailable;
  return ErrorCode.Internal;
}

/** The KilnError subclass callers test for, carrying the server's own message. */
function errorFor(code: ErrorCode, message: string, field: string | undefined): KilnError {
  let err: KilnError;
  if (code === ErrorCode.InvalidArgument && field) {
    const prefix = `${field}: `;
    err = new InvalidArgumentError(field, message.startsWith(prefix) ? message.slice(prefix.length) : message);
  } else if (code === ErrorCode.NotFound) err = new NotFoundError("object", field ?? "");
  else if (code === ErrorCode.FailedPrecondition) err = new FailedPreconditionError(message);
  else if (code === ErrorCode.Unauthenticated) err = new UnauthenticatedError(message);
  else err = new KilnError(code, message);
  err.message = message;
  return err;
}
