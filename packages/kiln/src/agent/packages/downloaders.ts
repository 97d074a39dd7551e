import { validateName } from "@kiln/protocol";
import * as fs from "node:fs";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { httpGet } from "./http-download.js";
import type { TlsClientOptions } from "@kiln/protocol/transport";
import type { PackageUrl } from "./package-url.js";

/** What a downloader may need besides the URL. */
export interface SourceContext {
  /** The object cache `cache://` URLs refer to, e.g. http://127.0.0.1:7422. */
  cacheEndpoint?: string;
  cacheToken?: string;
  /** For an https cache endpoint: its CA, and the agent's client certificate. */
  cacheTls?: TlsClientOptions;
  /** Longest silence allowed from a remote host. */
  idleTimeoutMs: number;
  signal: AbortSignal;
}

/** Opens a package's bytes as a stream; throws with a clear message when it cannot. */
export type Downloader = (url: PackageUrl, ctx: SourceContext) => Promise<Readable>;

const MAX_REDIRECTS = 5;

const openFile: Downloader = async (url) => {
  let file: string;
  try {
    file = fileURLToPath(url.location);
  } catch (err) {
    throw new Error(`not a local file URL: ${(err as Error).message}`, { cause: err });
  }
  const stat = await fs.promises.stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new Error(err.code === "ENOENT" ? `no such file ${file}` : `cannot read ${file}: ${err.message}`);
  });
  if (!stat.isFile()) throw new Error(`${file} is not a regular file`);
  return fs.createReadStream(file);
};

const openHttp: Downloader = (url, ctx) =>
  httpGet(new URL(url.location), { idleTimeoutMs: ctx.idleTimeoutMs, signal: ctx.signal, maxRedirects: MAX_REDIRECTS });

/** `cache://<app>/<session>/<id>`: GET /v1/objects/<key> on the configured cache, never another host. */
const openCache: Downloader = async (url, ctx) => {
  const key = url.location.slice("cache://".length);
  const components = key.split("/");
  if (components.length !== 3) throw new Error(`cache key "${key}" must have three components: <app>/<session>/<id>`);
  for (const component of components) validateName("key", component);
  if (!ctx.cacheEndpoint)
    throw new Error("cache:// URLs need the agent's cache endpoint (kiln agent --cache-endpoint), and none is set");
  const base = ctx.cacheEndpoint.endsWith("/") ? ctx.cacheEndpoint : `${ctx.cacheEndpoint}/`;
  const target = new URL(`v1/objects/${components.map(encodeURIComponent).join("/")}`, base);
  const headers = ctx.cacheToken ? { authorization: `Bearer ${ctx.cacheToken}` } : undefined;
  const res = await httpGet(target, {
    headers,
    ...(ctx.cacheTls ? { tls: ctx.cacheTls } : {}),
    idleTimeoutMs: ctx.idleTimeoutMs,
    signal: ctx.signal,
    maxRedirects: 0,
  });
  if (res.headers["kiln-format"] === "parts") {
    res.destroy();
    throw new Error(`cache object ${key} has patches applied; a package must be one plain object (upload it again)`);
  }
  return res;
};

/** The downloaders by URL scheme. */
export const downloaders: ReadonlyMap<string, Downloader> = new Map([
  ["file", openFile],
  ["http", openHttp],
  ["https", openHttp],
  ["cache", openCache],
]);

/**
 * The downloader for the URL's scheme; throws naming the scheme when there is none.
 *
 * @example
 * const source = await downloaderFor(url)(url, { idleTimeoutMs: 10_000, signal });
 */
export function downloaderFor(url: PackageUrl): Downloader {
  const downloader = downloaders.get(url.scheme);
  if (!downloader)
    throw new Error(`unsupported URL scheme "${url.scheme}:" (supported: ${[...downloaders.keys()].join(", ")})`);
  return downloader;
}
