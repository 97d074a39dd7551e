import { PassThrough, type Readable } from "node:stream";
import { Pool, util, type Dispatcher } from "undici";
import type { TlsClientOptions } from "@kiln/protocol/transport";
import {
  ERROR_CODE_HEADER,
  ErrorCode,
  FailedPreconditionError,
  InvalidArgumentError,
  KilnError,
  NotFoundError,
  TimeoutError,
  tlsFailureError,
  tokenRefusedError,
  UnauthenticatedError,
} from "@kiln/protocol";
import { isResendable, type CacheRequest, type Method, type WholeResponse } from "./cache-request.js";
import { RequestBatcher } from "./request-batcher.js";

/**
 * The object cache's HTTP/1.1 client, on an undici connection pool. Small
 * requests (values, stats, lists) made in the same event-loop turn go in
 * batches, pipelined on a few keep-alive connections; streamed uploads and
 * downloads take a connection of their own. Every request has an inactivity
 * timeout, network failures become UNAVAILABLE and the cache's error bodies
 * are turned back into KilnErrors.
 */

export interface StreamRequest {
  method: Method;
  path: string;
  headers?: Record<string, string>;
  /** Sent with backpressure; needs `contentLength`. */
  body?: Readable;
  contentLength?: number;
}

export interface CacheHttpOptions {
  endpoint: string;
  token?: string;
  /** For an `https://` endpoint. */
  tls?: TlsClientOptions;
  /** A request fails with TimeoutError when its connection is silent this long (connect, response, body). */
  timeoutMs: number;
  /** Connections for small requests (they are pipelined). Default 4. */
  maxConnections?: number;
  /** Gather each turn's small requests into batches (RequestBatcher). */
  batchRequests: boolean;
}

/** Header names are lower case; a repeated header is an array. */
export type ResponseHeaders = Record<string, string | string[] | undefined>;

/** A reply whose body is still to be read (or drained) by the caller. */
export interface StreamResponse {
  headers: ResponseHeaders;
  body: Readable;
}

const DEFAULT_MAX_CONNECTIONS = 4;
// Requests in flight per connection: 4 connections × 16 hold 64 operations. Deeper pipelines (or
// fewer, deeper connections) measured no faster on loopback and leave more to resend when a connection dies.
const PIPELINING = 16;
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const TIMEOUT_CODES = new Set(["UND_ERR_CONNECT_TIMEOUT", "UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT"]);
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ECONNABORTED",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_DESTROYED",
  "UND_ERR_RES_CONTENT_LENGTH_MISMATCH",
]);

/**
 * Sends requests to one object cache endpoint.
 *
 * @example
 * const h = new CacheHttp({ endpoint: "http://127.0.0.1:7422", timeoutMs: 30_000, batchRequests: true });
 * const { deleted } = await h.json<{ deleted: number }>({ method: "DELETE", path: "/v1/objects/app/s1" });
 * h.close();
 */
export class CacheHttp {
  readonly endpoint: string;
  private readonly small: Pool;
  private readonly requests: RequestBatcher | undefined;
  private readonly streams: Pool;
  private readonly fixedHeaders: Record<string, string>;
  private readonly timeoutMs: number;

  constructor(options: CacheHttpOptions) {
    this.endpoint = options.endpoint;
    this.fixedHeaders = options.token ? { authorization: `Bearer ${options.token}` } : {};
    this.timeoutMs = options.timeoutMs;
    const timeouts = {
      connectTimeout: options.timeoutMs,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      ...(options.tls ? { connect: { ...options.tls } } : {}),
    };
    this.requests = options.batchRequests ? new RequestBatcher((spec) => this.sendOne(spec)) : undefined;
    this.small = new Pool(options.endpoint, {
      ...timeouts,
      connections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      pipelining: PIPELINING,
    });
    // Transfers get connections of their own (as many as run at once), so a long one never holds up small requests.
    this.streams = new Pool(options.endpoint, timeouts);
  }

  /** Sends a small request and reads the whole reply; a status >= 300 other than 304 rejects with the server's error. */
  async request(spec: CacheRequest): Promise<WholeResponse> {
    let res: WholeResponse;
    try {
      res = await this.send(spec);
    } catch (err) {
      // A keep-alive connection the server closed just as this went out: a read is safe to send once more.
      if (!isResendable(spec) || !isConnectionLost(err)) throw this.failure(err, spec);
      res = await this.send(spec).catch((again: unknown) => {
        throw this.failure(again, spec);
      });
    }
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
   * streams, and the body's errors are KilnErrors like the rest.
   */
  async stream(spec: StreamRequest): Promise<StreamResponse> {
    const headers: Record<string, string> = { ...this.fixedHeaders, ...spec.headers };
    if (spec.contentLength !== undefined) headers["content-length"] = String(spec.contentLength);
    let res: Dispatcher.ResponseData;
    try {
      res = await this.streams.request({ method: spec.method, path: spec.path, headers, body: spec.body ?? null });
    } catch (err) {
      throw this.failure(err, spec);
    }
    if (res.statusCode >= 300) {
      const body = await readAll(res.body, MAX_ERROR_BODY_BYTES).catch(() => Buffer.alloc(0));
      throw this.errorFrom(res.statusCode, res.headers, body);
    }
    return { headers: res.headers, body: this.mapErrors(res.body, spec) };
  }

  private send(spec: CacheRequest): Promise<WholeResponse> {
    return this.requests && RequestBatcher.accepts(spec) ? this.requests.send(spec) : this.sendOne(spec);
  }

  private sendOne(spec: CacheRequest): Promise<WholeResponse> {
    return new Promise((resolve, reject) => {
      this.small.dispatch(
        {
          method: spec.method,
          path: spec.path,
          headers: spec.headers ? { ...this.fixedHeaders, ...spec.headers } : this.fixedHeaders,
          body: spec.body ?? null,
          // Lets undici pipeline writes too; WholeReply makes sure none is ever sent twice.
          idempotent: true,
        },
        new WholeReply(`${spec.method} ${this.endpoint}${spec.path}`, isResendable(spec), resolve, reject),
      );
    });
  }

  /** Closes every connection; requests still running fail. */
  close(): void {
    // Nothing to report: requests still running get their own error.
    this.small.destroy().catch(() => undefined);
    this.streams.destroy().catch(() => undefined);
  }

  /** What callers see instead of undici's errors: TimeoutError, UNAVAILABLE, or the error itself. */
  private failure(err: unknown, spec: { method: string; path: string }): Error {
    if (!(err instanceof Error)) return new Error(String(err));
    if (err instanceof KilnError) return err;
    const tlsFailure = tlsFailureError("the object cache", this.endpoint, err);
    if (tlsFailure) return tlsFailure;
    const code = (err as NodeJS.ErrnoException).code ?? "";
    let failure: KilnError;
    if (TIMEOUT_CODES.has(code))
      failure = new TimeoutError(`${spec.method} ${this.endpoint}${spec.path}`, this.timeoutMs);
    else if (NETWORK_CODES.has(code) || code.startsWith("HPE_"))
      failure = new KilnError(
        ErrorCode.Unavailable,
        `object cache at ${this.endpoint} is unavailable: ${err.message}`,
        {
          cause: err,
        },
      );
    else return err;
    failure.endpoint = this.endpoint;
    return failure;
  }

  /** `body` as a stream whose errors went through `failure`; destroying it aborts the download. */
  private mapErrors(body: Readable, spec: StreamRequest): Readable {
    const mapped = new PassThrough({ readableHighWaterMark: body.readableHighWaterMark });
    body.once("error", (err) => mapped.destroy(this.failure(err, spec)));
    mapped.once("close", () => body.destroy());
    body.pipe(mapped);
    return mapped;
  }

  private errorFrom(status: number, headers: ResponseHeaders, raw: Buffer): KilnError {
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
    const error = errorFor(code, message, typeof body.field === "string" ? body.field : undefined);
    if (code === ErrorCode.Unauthenticated) return tokenRefusedError("the object cache", this.endpoint, error);
    error.endpoint = this.endpoint;
    return error;
  }
}

/**
 * Collects one reply into a buffer. undici sends pipelined requests again
 * when the connection dies under an earlier one; that is harmless for a
 * read but a write may already have been applied, so a write's second
 * send is refused and it fails as UNAVAILABLE instead.
 */
class WholeReply implements Dispatcher.DispatchHandlers {
  private sent = false;
  private status = 0;
  private headers: Record<string, string> = {};
  private chunks: Buffer[] = [];
  private length = 0;

  constructor(
    private readonly what: string,
    private readonly resendable: boolean,
    private readonly resolve: (res: WholeResponse) => void,
    private readonly reject: (err: Error) => void,
  ) {}

  onConnect(): void {
    if (this.sent && !this.resendable)
      throw new KilnError(
        ErrorCode.Unavailable,
        `the connection closed before the object cache answered ${this.what}; it may or may not have been applied`,
      );
    this.sent = true;
    this.chunks = [];
    this.length = 0;
  }

  onHeaders(status: number, raw: Buffer[]): boolean {
    this.status = status;
    this.headers = {};
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = util.headerNameToString(raw[i]!);
      const value = raw[i + 1]!.toString("latin1");
      this.headers[name] = name in this.headers ? `${this.headers[name]}, ${value}` : value;
    }
    return true;
  }

  onData(chunk: Buffer): boolean {
    this.chunks.push(chunk);
    this.length += chunk.length;
    return true;
  }

  onComplete(): void {
    const body = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
    this.resolve({ status: this.status, headers: this.headers, body });
  }

  onError(err: Error): void {
    this.reject(err);
  }
}

function isConnectionLost(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "UND_ERR_SOCKET" || code === "ECONNRESET" || code === "EPIPE";
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

const ERROR_CODES = new Set<string>(Object.values(ErrorCode));

function isErrorCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && ERROR_CODES.has(code);
}

function codeForStatus(status: number): ErrorCode {
  if (status === 400) return ErrorCode.InvalidArgument;
  if (status === 401) return ErrorCode.Unauthenticated;
  if (status === 403) return ErrorCode.PermissionDenied;
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
