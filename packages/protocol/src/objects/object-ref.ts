import { InvalidArgumentError } from "../errors.js";
import { validateObjectKey } from "./keys.js";

/** The fields of an ObjectRef, as the cache server returns them in JSON. */
export interface ObjectRefInit {
  endpoint: string;
  key: string;
  version: number;
  size: number;
  sha256: string;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
/**
 * Marks ObjectRef.prototype across copies of the SDK: a process may load two
 * (a Runner executor's and the user project's), and a ref made by one must
 * still encode as a ref in the other.
 */
const OBJECT_REF_BRAND = Symbol.for("kiln.ObjectRef");
const MAX_ENDPOINT_LENGTH = 2048;
/** A cluster has a handful of cache endpoints; remembering the valid ones spares a URL parse per decoded ref. */
const validEndpoints = new Set<string>();
const MAX_REMEMBERED_ENDPOINTS = 64;

function requireString(input: Record<string, unknown>, field: keyof ObjectRefInit): string {
  const value = input[field];
  if (value === undefined) throw new InvalidArgumentError(field, "is required");
  if (typeof value !== "string") throw new InvalidArgumentError(field, `must be a string (got ${typeof value})`);
  return value;
}

function requireCount(input: Record<string, unknown>, field: "version" | "size", min: number): number {
  const value = input[field];
  if (value === undefined) throw new InvalidArgumentError(field, "is required");
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min)
    throw new InvalidArgumentError(field, `must be an integer >= ${min} (got ${String(value)})`);
  return value;
}

function validateEndpoint(endpoint: string): string {
  if (validEndpoints.has(endpoint)) return endpoint;
  if (endpoint.length > MAX_ENDPOINT_LENGTH)
    throw new InvalidArgumentError("endpoint", `must be at most ${MAX_ENDPOINT_LENGTH} characters`);
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new InvalidArgumentError("endpoint", `"${endpoint}" is not a URL (example: http://127.0.0.1:7422)`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new InvalidArgumentError("endpoint", `"${endpoint}" must be an http:// or https:// URL`);
  // Credentials, queries and fragments in a ref would travel to whoever reads the ref.
  if (url.username || url.password || url.search || url.hash)
    throw new InvalidArgumentError("endpoint", `"${endpoint}" must not carry credentials, a query or a fragment`);
  if (validEndpoints.size < MAX_REMEMBERED_ENDPOINTS) validEndpoints.add(endpoint);
  return endpoint;
}

/**
 * Points at one version of an object in the Kiln object cache. Immutable;
 * built only through {@link ObjectRef.from}, which checks every field, so a
 * ref that exists is well formed. The codec keeps refs as refs (a plain
 * object with the same fields stays a plain object).
 *
 * @example
 * const ref = ObjectRef.from({ endpoint: "http://127.0.0.1:7422", key: "app/s1/x", version: 1, size: 3, sha256 });
 * JSON.stringify(ref) // {"endpoint":"http://127.0.0.1:7422","key":"app/s1/x","version":1,"size":3,"sha256":"…"}
 */
export class ObjectRef {
  readonly endpoint: string;
  readonly key: string;
  readonly version: number;
  readonly size: number;
  readonly sha256: string;

  private constructor(init: ObjectRefInit) {
    this.endpoint = init.endpoint;
    this.key = init.key;
    this.version = init.version;
    this.size = init.size;
    this.sha256 = init.sha256;
    Object.freeze(this);
  }

  /**
   * Builds a ref from its JSON form (a parsed object or the JSON text).
   * Throws InvalidArgumentError naming the first bad field. Unknown fields are
   * ignored so a newer server may add some.
   *
   * @example
   * const ref = ObjectRef.from(await response.json());
   */
  static from(json: unknown): ObjectRef {
    if (json instanceof ObjectRef) return json;
    let input = json;
    if (typeof input === "string") {
      try {
        input = JSON.parse(input) as unknown;
      } catch {
        throw new InvalidArgumentError("objectRef", "is not valid JSON");
      }
    }
    if (typeof input !== "object" || input === null || Array.isArray(input))
      throw new InvalidArgumentError("objectRef", "must be an object {endpoint, key, version, size, sha256}");
    const fields = input as Record<string, unknown>;
    const sha256 = requireString(fields, "sha256");
    if (!SHA256_HEX.test(sha256)) throw new InvalidArgumentError("sha256", "must be 64 lowercase hex characters");
    return new ObjectRef({
      endpoint: validateEndpoint(requireString(fields, "endpoint")),
      key: validateObjectKey(requireString(fields, "key")),
      version: requireCount(fields, "version", 1),
      size: requireCount(fields, "size", 0),
      sha256,
    });
  }

  /** The JSON form, as the cache server writes it. */
  toJSON(): ObjectRefInit {
    return { endpoint: this.endpoint, key: this.key, version: this.version, size: this.size, sha256: this.sha256 };
  }
}

Object.defineProperty(ObjectRef.prototype, OBJECT_REF_BRAND, { value: true });

/** True for an ObjectRef made by this or any other copy of the Kiln SDK in the process. */
export function isObjectRef(value: unknown): value is ObjectRef {
  if (value instanceof ObjectRef) return true;
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value) as Record<symbol, unknown> | null;
  return proto !== null && Object.hasOwn(proto, OBJECT_REF_BRAND) && proto[OBJECT_REF_BRAND] === true;
}
