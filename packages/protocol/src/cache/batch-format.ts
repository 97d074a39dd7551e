import { decodeValue, encodeValue } from "../codec/index.js";
import { InvalidArgumentError, KilnError, ErrorCode } from "../errors.js";

/**
 * The object cache's batch format, shared by the server and the SDK. A
 * batch is one `POST /v1/batch` carrying several ordinary cache requests;
 * the server runs each exactly as if it had come alone and answers with
 * their responses in the same order. It exists for small objects, where
 * HTTP's per-request cost on both ends was most of the work.
 *
 * Both bodies are Kiln codec values (decoding never runs code): the request
 * a list of `[method, path, headers, body | null]`, the response a list of
 * `[status, headers, body]`. Status SEND_ALONE means the response was too
 * large to batch: send that request on its own.
 */

export const BATCH_PATH = "/v1/batch";
export const BATCH_CONTENT_TYPE = "application/vnd.kiln.batch";
export const MAX_BATCH_ITEMS = 1000;
export const MAX_BATCH_REQUEST_BYTES = 8 * 1024 * 1024;
/** A sub-response body over this many bytes is not batched. */
export const MAX_BATCHED_RESPONSE_BYTES = 1024 * 1024;
export const SEND_ALONE = 0;

const METHODS = new Set(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]);

export interface SubRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Uint8Array;
}

/** Headers may be left out when encoding; decoded sub-requests always have them. */
interface SubRequestHeaders {
  headers?: Record<string, string>;
}

export interface SubResponse {
  status: number;
  headers: Record<string, string>;
  body: Uint8Array;
}

/** @example const body = encodeBatchRequest([{ method: "GET", path: "/v1/objects/a/s/k", headers: {} }]); */
export function encodeBatchRequest(items: readonly (Omit<SubRequest, "headers"> & SubRequestHeaders)[]): Uint8Array {
  return encodeValue(items.map((i) => [i.method, i.path, i.headers ?? {}, i.body ?? null]));
}

/** The sub-requests of a batch body; anything malformed is refused naming the item and field. */
export function decodeBatchRequest(bytes: Uint8Array): SubRequest[] {
  const items = decodeValue(bytes);
  if (!Array.isArray(items)) throw new InvalidArgumentError("batch", "must be a list of requests");
  if (items.length === 0 || items.length > MAX_BATCH_ITEMS)
    throw new InvalidArgumentError("batch", `must hold 1 to ${MAX_BATCH_ITEMS} requests (got ${items.length})`);
  return items.map((item: unknown, i) => {
    const at = `batch[${i}]`;
    if (!Array.isArray(item) || item.length !== 4)
      throw new InvalidArgumentError(at, "must be [method, path, headers, body | null]");
    const [method, path, headers, body] = item as unknown[];
    if (typeof method !== "string" || !METHODS.has(method))
      throw new InvalidArgumentError(`${at}.method`, `must be one of ${[...METHODS].join(", ")}`);
    if (typeof path !== "string" || !path.startsWith("/v1/") || path === BATCH_PATH)
      throw new InvalidArgumentError(`${at}.path`, `must be a /v1/ path of the cache API other than ${BATCH_PATH}`);
    const request: SubRequest = { method, path, headers: stringRecord(headers, `${at}.headers`) };
    if (body !== null) {
      if (!(body instanceof Uint8Array)) throw new InvalidArgumentError(`${at}.body`, "must be bytes or null");
      request.body = body;
    }
    return request;
  });
}

/** @example res.end(encodeBatchResponse([{ status: 404, headers: {}, body: new Uint8Array() }])); */
export function encodeBatchResponse(items: readonly SubResponse[]): Uint8Array {
  return encodeValue(items.map((i) => [i.status, i.headers, i.body]));
}

/** The sub-responses of a batch reply, which must answer exactly `expected` requests. */
export function decodeBatchResponse(bytes: Uint8Array, expected: number): SubResponse[] {
  const items = decodeValue(bytes);
  const bad = (what: string) => new KilnError(ErrorCode.Internal, `object cache batch reply: ${what}`);
  if (!Array.isArray(items) || items.length !== expected)
    throw bad(`expected ${expected} responses, got ${Array.isArray(items) ? items.length : typeof items}`);
  return items.map((item: unknown, i) => {
    if (!Array.isArray(item) || item.length !== 3) throw bad(`response ${i} is not [status, headers, body]`);
    const [status, headers, body] = item as unknown[];
    if (typeof status !== "number" || !(body instanceof Uint8Array)) throw bad(`response ${i} is malformed`);
    return { status, headers: stringRecord(headers, `response ${i} headers`), body };
  });
}

function stringRecord(value: unknown, field: string): Record<string, string> {
  if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Map)
    throw new InvalidArgumentError(field, "must be an object of header names to strings");
  const out: Record<string, string> = {};
  for (const [name, v] of Object.entries(value)) {
    if (typeof v !== "string") throw new InvalidArgumentError(`${field}.${name}`, "must be a string");
    out[name.toLowerCase()] = v;
  }
  return out;
}
