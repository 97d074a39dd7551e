import {
  Sha256Counter,
  sha256Hex,
  CODEC_FORMAT_VERSION,
  decodeValue,
  encodeValue,
  ErrorCode,
  FailedPreconditionError,
  InvalidArgumentError,
  KilnError,
  validateListPrefix,
  validateObjectKey,
  validateObjectPrefix,
  ObjectRef,
  type ObjectRefInit,
} from "@kiln/protocol";
import { createHash, randomBytes, type Hash } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { Transform, type Readable } from "node:stream";
import {
  loadCacheConfig,
  normalizeEndpoint,
  type CacheConfigOptions,
  type ResolvedCacheConfig,
} from "../client/config.js";
import { readTlsFiles } from "../client/tls-config.js";
import type { TlsClientOptions } from "@kiln/protocol/transport";
import type { WholeResponse } from "./cache-request.js";
import { CacheHttp, readAll, type ResponseHeaders } from "./http.js";
import { LocalObjectCache, type CachedObject } from "./local-cache.js";
import { defaultMerge, type MergeFunction } from "./merge.js";
import { CacheHeader, chainSha256, decodeParts, PartsDecoder } from "@kiln/protocol/cache";

export interface ObjectCacheOptions {
  /** The cache's `http://host:port` or `https://host:port`. Refs naming any other endpoint are refused. */
  endpoint: string;
  token?: string;
  /** For an `https://` endpoint: the CA to verify it with (default: the system's), a client certificate. */
  tls?: TlsClientOptions;
  /** A request fails with TimeoutError when the connection is silent this long. Default 60 000. */
  requestTimeoutMs?: number;
  /** Bytes of objects kept on this side for incremental reads; 0 turns it off. Default 64 MiB. */
  localCacheBytes?: number;
  /** Connections for small requests, which are pipelined on them. Default 4. */
  maxConnections?: number;
  /**
   * Send the small requests made in one event-loop turn as one `POST /v1/batch`
   * (each still gets the answer it would have had alone). Default true; turn it
   * off for a cache server older than the batch route.
   */
  batchRequests?: boolean;
}

/**
 * Which object an operation is about: an ObjectRef (or its JSON form), a key
 * `app/session/id`, `cache://app/session/id`, or `<endpoint>/v1/objects/<key>`.
 */
export type ObjectTarget = ObjectRef | ObjectRefInit | string;

export interface GetObjectOptions<T> {
  /** Combines the base with its deltas; see {@link defaultMerge} for what happens without it. */
  merge?: MergeFunction<T>;
}

/** What `statObject` and `listObjects` report; timestamps are Unix ms. */
export interface ObjectStat {
  key: string;
  version: number;
  /** Bytes of the base and every delta. */
  size: number;
  sha256: string;
  baseVersion: number;
  /** Deltas after the base. */
  deltas: number;
  createdAt: number;
  updatedAt: number;
}

/**
 * An ObjectCache for a resolved cache configuration: its endpoint, token and TLS files (read now).
 *
 * @example
 * const cache = objectCacheFor(loadCacheConfig({ context: "prod" }));
 */
export function objectCacheFor(config: Pick<ResolvedCacheConfig, "cacheEndpoint" | "cacheToken" | "tls">): ObjectCache {
  return new ObjectCache({
    endpoint: config.cacheEndpoint,
    ...(config.cacheToken ? { token: config.cacheToken } : {}),
    tls: readTlsFiles(config.tls),
  });
}

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_LOCAL_CACHE_BYTES = 64 * 1024 * 1024;
const LIST_PAGE = 1000;
const FILE_CHUNK_BYTES = 1024 * 1024;
// Room for the socket to keep reading while the previous chunks are being written: measured ~1.3x faster than 16 KiB.
const DOWNLOAD_BUFFER_BYTES = 8 * 1024 * 1024;

/**
 * A client of one Kiln object cache. Values go through the Kiln codec;
 * files stream with a sha256 check. Objects read or written through it are
 * kept (bounded by `localCacheBytes`) so a later read fetches only what
 * changed. Refs naming another endpoint are refused without a request.
 *
 * @example
 * const cache = new ObjectCache({ endpoint: "http://127.0.0.1:7422" });
 * const ref = await cache.putObject("my-app/s1", { rows: [1, 2] });
 * await cache.patchObject(ref, { more: true });
 * console.log(await cache.getObject(ref)); // { rows: [1, 2], more: true }
 * cache.close();
 */
export class ObjectCache {
  /** The configured endpoint, normalized to `scheme://host:port`. */
  readonly endpoint: string;
  private readonly http: CacheHttp;
  private readonly local: LocalObjectCache | undefined;
  private advertised: Promise<string | undefined> | undefined;

  /**
   * The cache the configuration names (KILN_CACHE_ENDPOINT, the config
   * context's cache, else http://127.0.0.1:7422), with its token; see loadCacheConfig.
   *
   * @example
   * const cache = ObjectCache.fromConfig({ context: "prod" });
   */
  static fromConfig(options: CacheConfigOptions = {}): ObjectCache {
    return objectCacheFor(loadCacheConfig(options));
  }

  constructor(options: ObjectCacheOptions) {
    this.endpoint = normalizeEndpoint("endpoint", options.endpoint);
    this.http = new CacheHttp({
      endpoint: this.endpoint,
      ...(options.token ? { token: options.token } : {}),
      ...(options.tls ? { tls: options.tls } : {}),
      timeoutMs: options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS,
      ...(options.maxConnections !== undefined ? { maxConnections: options.maxConnections } : {}),
      batchRequests: options.batchRequests ?? true,
    });
    const localBytes = options.localCacheBytes ?? DEFAULT_LOCAL_CACHE_BYTES;
    this.local = localBytes > 0 ? new LocalObjectCache(localBytes) : undefined;
  }

  /**
   * Stores `value` (encoded with the Kiln codec) under a prefix `app/session`
   * (the server picks the id) or at a key `app/session/id` (version 1, or
   * the next version when it exists).
   *
   * @example
   * const ref = await cache.putObject("my-app/s1", new Map([["a", 1]]));
   */
  async putObject(keyOrPrefix: string, value: unknown): Promise<ObjectRef> {
    return this.putBytes(keyOrPrefixPath(keyOrPrefix), encodeValue(value));
  }

  /**
   * Like putObject, for a value already encoded with `encodeValue`: a caller
   * that had to encode a large value (to learn its size) does not encode it again.
   *
   * @example
   * const bytes = encodeValue(bigTable);
   * const ref = bytes.byteLength > limit ? await cache.putEncoded("my-app/s1", bytes) : undefined;
   */
  async putEncoded(keyOrPrefix: string, encoded: Uint8Array): Promise<ObjectRef> {
    if (encoded[0] !== CODEC_FORMAT_VERSION)
      throw new InvalidArgumentError("encoded", `must be an encodeValue() encoding (format ${CODEC_FORMAT_VERSION})`);
    return this.putBytes(keyOrPrefixPath(keyOrPrefix), encoded);
  }

  /**
   * Reads the current version of an object, decoded. With deltas, the base
   * and deltas are combined by `merge`, else by {@link defaultMerge}.
   *
   * @example
   * const rows = await cache.getObject<number[]>(ref);
   * const total = await cache.getObject<number>(ref, { merge: (base, deltas) => base + deltas.length });
   */
  async getObject<T = unknown>(target: ObjectTarget, options: GetObjectOptions<T> = {}): Promise<T> {
    const key = await this.locate(target);
    const held = this.local?.get(this.endpoint, key);
    let current = this.receive(key, await this.read(key, held), held);
    if (!current) {
      this.local?.delete(this.endpoint, key);
      current = this.receive(key, await this.read(key, undefined), undefined)!;
    }
    const base = decodeValue(current.base) as T;
    if (current.deltas.length === 0) return base;
    const deltas = current.deltas.map((d) => decodeValue(d));
    return options.merge ? options.merge(base, deltas) : (defaultMerge(key, base, deltas) as T);
  }

  /**
   * Replaces the object `target` names with `value` (its version goes up by one, deltas are dropped).
   *
   * @example
   * ref = await cache.updateObject(ref, { rows: [] });
   */
  async updateObject(target: ObjectTarget, value: unknown): Promise<ObjectRef> {
    return this.putBytes(objectPath(await this.locate(target)), encodeValue(value));
  }

  /**
   * Appends `delta` (encoded with the codec) to the object; the version goes
   * up by one and reads return the base combined with every delta.
   *
   * @example
   * ref = await cache.patchObject(ref, [4, 5]); // a base [1, 2, 3] now reads [1, 2, 3, 4, 5]
   */
  async patchObject(target: ObjectTarget, delta: unknown): Promise<ObjectRef> {
    const key = await this.locate(target);
    const bytes = encodeValue(delta);
    const ref = ObjectRef.from(await this.http.json<unknown>({ method: "PATCH", path: objectPath(key), body: bytes }));
    const held = this.local?.get(this.endpoint, key);
    if (held && held.version === ref.version - 1) {
      if (chainSha256(held.sha256).update(bytes).digest("hex") === ref.sha256)
        this.local?.append(this.endpoint, key, held.version, bytes, ref.version, ref.sha256);
      else this.local?.delete(this.endpoint, key);
    }
    return ref;
  }

  /**
   * Deletes one key `app/session/id`, every key of `app/session`, or every
   * key of an application with `app/*`. Returns how many objects went; a
   * missing key throws NotFoundError, an empty prefix returns 0.
   *
   * @example
   * await cache.deleteObjects("my-app/*");
   */
  async deleteObjects(prefixOrKey: string): Promise<number> {
    let localPrefix: string | undefined;
    if (prefixOrKey.endsWith("/*")) {
      localPrefix = `${validateListPrefix(prefixOrKey.slice(0, -2))}/`;
      if (localPrefix.split("/").length !== 2)
        throw new InvalidArgumentError("prefix", `"${prefixOrKey}": "*" deletes a whole application, as in app/*`);
    } else if (componentCount(prefixOrKey) === 2) localPrefix = `${validateObjectPrefix(prefixOrKey)}/`;
    else validateObjectKey(prefixOrKey);
    const { deleted } = await this.http.json<{ deleted: number }>({
      method: "DELETE",
      path: objectPath(prefixOrKey),
    });
    if (localPrefix) this.local?.deletePrefix(this.endpoint, localPrefix);
    else this.local?.delete(this.endpoint, prefixOrKey);
    return deleted;
  }

  /**
   * Stores raw bytes (not codec encoded) at a key or prefix: the file at
   * `source`, streamed and hashed on the way, or bytes already in memory.
   * A reply whose sha256 differs throws.
   *
   * @example
   * const ref = await cache.uploadObject("my-app/pkg/app.tar.gz", "dist/app.tar.gz");
   * const csv = await cache.uploadObject("my-app/s1", new TextEncoder().encode("id,total\n1,2\n"));
   */
  async uploadObject(keyOrPrefix: string, source: string | Uint8Array): Promise<ObjectRef> {
    const objectPathname = keyOrPrefixPath(keyOrPrefix);
    if (typeof source !== "string") return this.putBytes(objectPathname, source);
    const file = source;
    const input = fs.createReadStream(file, { highWaterMark: FILE_CHUNK_BYTES });
    const opened = await new Promise<fs.Stats>((resolve, reject) => {
      input.once("error", reject);
      input.once("open", (fd) => fs.fstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
    }).catch((err: unknown) => {
      input.destroy();
      throw err;
    });
    const hashing = new Sha256Counter();
    // Errors on either side tear down both; the request reports them.
    pipeline(input, hashing).catch(() => undefined);
    const ref = ObjectRef.from(
      await readJson(
        (await this.http.stream({ method: "PUT", path: objectPathname, body: hashing, contentLength: opened.size }))
          .body,
      ),
    );
    this.local?.delete(this.endpoint, ref.key);
    expectSha256(ref, hashing.digest(), opened.size);
    return ref;
  }

  /**
   * Streams an object's bytes (base then deltas) into `file`: written to a
   * temp file beside it, checked against the server's sha256, then renamed
   * into place. On any failure nothing is left at `file` or beside it.
   * With `sha256`, only that content is accepted: an object that has
   * changed since is refused (FailedPreconditionError) before anything is written.
   *
   * @example
   * await cache.downloadObject(ref, "/tmp/app.tar.gz");
   * await cache.downloadObject(ref, "/tmp/exactly.bin", { sha256: ref.sha256 }); // the content the ref names, or an error
   */
  async downloadObject(target: ObjectTarget, file: string, options: { sha256?: string } = {}): Promise<void> {
    const key = await this.locate(target);
    const res = await this.http.stream({ method: "GET", path: objectPath(key) });
    const expected = header(res.headers, CacheHeader.sha256);
    const size = Number(header(res.headers, CacheHeader.size));
    if (options.sha256 !== undefined && expected !== options.sha256) {
      res.body.destroy();
      throw new FailedPreconditionError(
        `object ${key} has changed: it now has sha256 ${expected}, not ${options.sha256}; ${file} was not written`,
      );
    }
    const verifier = res.headers[CacheHeader.format] === "parts" ? partsVerifier() : rawVerifier();
    const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString("hex")}.part`);
    try {
      await pipeline(
        res.body,
        verifier.stream,
        fs.createWriteStream(temp, { flags: "wx", highWaterMark: DOWNLOAD_BUFFER_BYTES }),
      );
      const got = verifier.result();
      if (got.sha256 !== expected || got.size !== size)
        throw new KilnError(
          ErrorCode.Internal,
          `object ${key}: the bytes received (${got.size} bytes, sha256 ${got.sha256}) do not match ` +
            `what the server announced (${size} bytes, sha256 ${expected}); ${file} was not written`,
        );
      await fsp.rename(temp, file);
    } catch (err) {
      await fsp.rm(temp, { force: true });
      throw err;
    }
  }

  /**
   * The version, size, sha256 and delta count of one key.
   *
   * @example
   * const { version, deltas } = await cache.statObject("my-app/s1/result");
   */
  async statObject(key: string): Promise<ObjectStat> {
    validateObjectKey(key);
    return this.http.json<ObjectStat>({ method: "GET", path: `/v1/stat/${key}` });
  }

  /**
   * Every object under `app` or `app/session`, sorted by key (pages are fetched as needed).
   *
   * @example
   * for (const o of await cache.listObjects("my-app")) console.log(o.key, o.size);
   */
  async listObjects(prefix: string): Promise<ObjectStat[]> {
    validateListPrefix(prefix);
    const all: ObjectStat[] = [];
    let after: string | undefined;
    do {
      const query = `prefix=${encodeURIComponent(prefix)}&limit=${LIST_PAGE}${after ? `&after=${encodeURIComponent(after)}` : ""}`;
      const page = await this.http.json<{ objects: ObjectStat[]; next?: string }>({
        method: "GET",
        path: `/v1/list?${query}`,
      });
      all.push(...page.objects);
      after = page.next;
    } while (after);
    return all;
  }

  /** Closes idle connections; the process can exit without it, this just does it sooner. */
  close(): void {
    this.http.close();
  }

  private async putBytes(pathname: string, bytes: Uint8Array): Promise<ObjectRef> {
    const ref = ObjectRef.from(await this.http.json<unknown>({ method: "PUT", path: pathname, body: bytes }));
    expectSha256(ref, sha256Hex(bytes), bytes.byteLength);
    this.local?.set(this.endpoint, ref.key, {
      version: ref.version,
      sha256: ref.sha256,
      base: bytes,
      deltas: [],
      size: bytes.byteLength,
    });
    return ref;
  }

  /** GET of an object, incremental when a version is held. */
  private read(key: string, held: CachedObject | undefined): Promise<WholeResponse> {
    return this.http.request({
      method: "GET",
      path: objectPath(key),
      ...(held ? { headers: { [CacheHeader.haveVersion]: String(held.version) } } : {}),
    });
  }

  /** The key `target` names, after checking it names this cache. */
  private async locate(target: ObjectTarget): Promise<string> {
    if (typeof target !== "string") {
      const ref = ObjectRef.from(target);
      await this.checkEndpoint(ref.endpoint);
      return ref.key;
    }
    if (target.startsWith("cache://")) return validateObjectKey(target.slice("cache://".length));
    const url = /^https?:\/\//i.test(target) ? parseUrl(target) : undefined;
    if (!url) return validateObjectKey(target);
    await this.checkEndpoint(`${url.protocol}//${url.host}`);
    if (!url.pathname.startsWith("/v1/objects/") || url.search || url.hash)
      throw new InvalidArgumentError(
        "ref",
        `"${target}" is not an object URL (<endpoint>/v1/objects/<app>/<session>/<id>)`,
      );
    return validateObjectKey(url.pathname.slice("/v1/objects/".length));
  }

  /**
   * Accepts the configured endpoint, or the one the configured server says
   * it advertises in its refs (the same server named another way). Nothing
   * is ever sent to the endpoint a ref names.
   */
  private async checkEndpoint(endpoint: string): Promise<void> {
    if (endpoint === this.endpoint) return;
    const named = comparableEndpoint(endpoint);
    if (named === this.endpoint) return;
    this.advertised ??= this.http
      .json<{ endpoint?: unknown }>({ method: "GET", path: "/v1/health" })
      .then((h) => (typeof h.endpoint === "string" ? comparableEndpoint(h.endpoint) : undefined))
      .catch((err: unknown) => {
        this.advertised = undefined;
        throw err;
      });
    if (named !== undefined && named === (await this.advertised)) return;
    throw new InvalidArgumentError(
      "ref.endpoint",
      `"${endpoint}" is not the configured object cache ${this.endpoint}; refusing to follow it`,
    );
  }

  /**
   * Turns a GET reply into the object's current bytes, verified against the
   * announced sha256. Undefined when the reply builds on `held` but `held`
   * is not what the server has under that version (the key was deleted and
   * written again elsewhere): the caller reads the whole object instead.
   */
  private receive(key: string, res: WholeResponse, held: CachedObject | undefined): CachedObject | undefined {
    if (res.status === 304) {
      if (!held) throw protocolError(key, "answered 304 Not Modified to a read that named no version");
      return res.headers[CacheHeader.sha256] === held.sha256 ? held : undefined;
    }
    const body = res.body;
    const version = Number(header(res.headers, CacheHeader.version));
    const sha256 = header(res.headers, CacheHeader.sha256);
    let current: CachedObject;
    if (res.headers[CacheHeader.format] !== "parts") {
      current = { version, sha256: sha256Hex(body), base: body, deltas: [], size: body.byteLength };
    } else {
      const parts = decodeParts(body);
      const from = res.headers[CacheHeader.deltaFrom];
      let start: CachedObject;
      if (from !== undefined) {
        if (!held || held.version !== Number(from))
          throw protocolError(key, `sent the deltas after version ${String(from)}, which this client does not hold`);
        start = held;
      } else {
        const base = parts.shift();
        if (!base) throw protocolError(key, "sent a parts body with no parts");
        start = {
          version: base.version,
          sha256: sha256Hex(base.bytes),
          base: base.bytes,
          deltas: [],
          size: base.bytes.byteLength,
        };
      }
      let chained = start.sha256;
      let size = start.size;
      for (const d of parts) {
        chained = chainSha256(chained).update(d.bytes).digest("hex");
        size += d.bytes.byteLength;
      }
      const deltas = parts.length > 0 ? [...start.deltas, ...parts.map((d) => d.bytes)] : start.deltas;
      current = { version, sha256: chained, base: start.base, deltas, size };
    }
    if (current.sha256 !== sha256) {
      if (current.base === held?.base) return undefined;
      throw protocolError(key, `sent version ${version} whose bytes hash to ${current.sha256}, not ${sha256}`);
    }
    this.local?.set(this.endpoint, key, current);
    return current;
  }
}

function objectPath(keyOrPrefix: string): string {
  // Keys are validated: only [A-Za-z0-9._-/] (and "*" for an application), nothing to escape.
  return `/v1/objects/${keyOrPrefix}`;
}

function componentCount(value: string): number {
  return value.split("/").length;
}

function keyOrPrefixPath(keyOrPrefix: string): string {
  if (componentCount(keyOrPrefix) === 2) validateObjectPrefix(keyOrPrefix);
  else validateObjectKey(keyOrPrefix);
  return objectPath(keyOrPrefix);
}

function comparableEndpoint(endpoint: string): string | undefined {
  const url = parseUrl(endpoint);
  return url ? `${url.protocol}//${url.host}` : undefined;
}

function parseUrl(text: string): URL | undefined {
  try {
    return new URL(text);
  } catch {
    return undefined;
  }
}

async function readJson(body: Readable): Promise<unknown> {
  return JSON.parse((await readAll(body, Infinity)).toString("utf8")) as unknown;
}

function header(headers: ResponseHeaders, name: string): string {
  const value = headers[name];
  if (typeof value !== "string") throw new KilnError(ErrorCode.Internal, `object cache reply has no ${name} header`);
  return value;
}

function protocolError(key: string, what: string): KilnError {
  return new KilnError(ErrorCode.Internal, `object ${key}: the object cache ${what}`);
}

function expectSha256(ref: ObjectRef, sha256: string, size: number): void {
  if (ref.sha256 !== sha256 || ref.size !== size)
    throw new KilnError(
      ErrorCode.Internal,
      `object ${ref.key} version ${ref.version}: the server stored ${ref.size} bytes with sha256 ${ref.sha256}, ` +
        `but ${size} bytes with sha256 ${sha256} were sent; write it again`,
    );
}

/** Hashes a raw body as it passes. */
function rawVerifier() {
  const stream = new Sha256Counter();
  return { stream, result: () => ({ sha256: stream.digest(), size: stream.bytes }) };
}

/** Unwraps a parts body into the object's bytes, chaining the sha256 part by part. */
function partsVerifier() {
  let hash: Hash | undefined;
  let sha256 = "";
  let size = 0;
  const decoder = new PartsDecoder({
    part() {
      if (hash) sha256 = hash.digest("hex");
      hash = hash ? chainSha256(sha256) : createHash("sha256");
    },
    data(bytes) {
      hash!.update(bytes);
      size += bytes.length;
      stream.push(bytes);
    },
  });
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      try {
        decoder.push(chunk);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
    flush(callback) {
      try {
        decoder.end();
        if (!hash) throw new KilnError(ErrorCode.Internal, "the object cache sent a parts body with no parts");
        sha256 = hash.digest("hex");
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
  });
  return { stream, result: () => ({ sha256, size }) };
}
