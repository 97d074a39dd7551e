import * as fs from "node:fs";
import { pipeline } from "node:stream/promises";
import { Sha256Counter } from "@kiln/protocol";
import { downloaderFor } from "./downloaders.js";
import { tempPath } from "../../package-store/layout.js";
import type { PackageUrl } from "./package-url.js";
import type { TlsClientOptions } from "@kiln/protocol/transport";

export interface DownloadOptions {
  cacheEndpoint?: string;
  cacheToken?: string;
  cacheTls?: TlsClientOptions;
  /** The whole download, from connecting to the last byte. */
  downloadTimeoutMs: number;
  /** Connecting, the first byte, and any pause between bytes. */
  idleTimeoutMs: number;
  signal: AbortSignal;
}

/** A finished download: a temp file the caller moves or removes. */
export interface Downloaded {
  file: string;
  sha256: string;
  bytes: number;
}

/**
 * Streams the package into a new temp file in `dir`, hashing it on the way.
 * On any failure (including a timeout or an abort) the temp file is removed.
 *
 * @example
 * const { file, sha256 } = await downloadPackage(parsePackageUrl(url), layout.downloads, options);
 */
export async function downloadPackage(url: PackageUrl, dir: string, o: DownloadOptions): Promise<Downloaded> {
  const deadline = new AbortController();
  const timer = setTimeout(
    () => deadline.abort(new Error(`timed out: the download did not finish within ${o.downloadTimeoutMs} ms`)),
    o.downloadTimeoutMs,
  );
  const signal = AbortSignal.any([o.signal, deadline.signal]);
  const file = tempPath(dir, ".part");
  try {
    const source = await downloaderFor(url)(url, { ...o, signal });
    const counter = new Sha256Counter();
    await pipeline(source, counter, fs.createWriteStream(file, { flags: "wx" }), { signal });
    return { file, sha256: counter.digest(), bytes: counter.bytes };
  } catch (err) {
    await fs.promises.rm(file, { force: true });
    if (deadline.signal.aborted) throw deadline.signal.reason as Error;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
