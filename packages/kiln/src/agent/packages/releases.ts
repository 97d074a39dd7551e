import * as fs from "node:fs/promises";
import * as path from "node:path";
import { extractArchive, packageFormat } from "./archive.js";
import type { ExtractionLimits } from "./extraction-limits.js";
import { downloadPackage, type Downloaded, type DownloadOptions } from "./download-file.js";
import { exists, renameIntoPlace, tempPath, type PackageLayout } from "../../package-store/layout.js";
import type { PackageUrl } from "./package-url.js";
import { joinFlight } from "./single-flight.js";

/** A package's content on this node: `<releases>/<sha256>/`, complete once it exists. */
export interface Release {
  dir: string;
  sha256: string;
}

export interface ReleaseOptions extends Omit<DownloadOptions, "signal"> {
  layout: PackageLayout;
  limits: ExtractionLimits;
  log(line: string): void;
}

const ARCHIVE_NAME = /\.(tar\.gz|tgz|zip)$/i;

/**
 * The release holding the package at `url`. With an expected digest whose
 * release exists, nothing is downloaded; otherwise the package is downloaded
 * (once for concurrent callers), verified against the digest if there is one,
 * and extracted into a temp dir renamed to `<sha256>` (or, if that exists,
 * dropped in favour of it). Changed content always means a new release.
 *
 * @example
 * const { dir } = await obtainRelease(parsePackageUrl(app.url), undefined, options, signal);
 */
export async function obtainRelease(
  url: PackageUrl,
  expected: string | undefined,
  o: ReleaseOptions,
  signal?: AbortSignal,
): Promise<Release> {
  if (expected && (await holds(releaseDir(o.layout, expected), url))) {
    o.log(`using release ${expected} for ${url.display} (digest matches, not downloading)`);
    return { dir: releaseDir(o.layout, expected), sha256: expected };
  }
  return joinFlight(`download ${o.layout.root} ${url.location} ${expected ?? ""}`, signal, async (flightSignal) => {
    o.log(`downloading ${url.display}`);
    const downloaded = await downloadPackage(url, o.layout.downloads, { ...o, signal: flightSignal });
    try {
      if (expected && downloaded.sha256 !== expected)
        throw new Error(`sha256 mismatch: expected ${expected}, the downloaded content has ${downloaded.sha256}`);
      return await joinFlight(`release ${o.layout.root} ${downloaded.sha256}`, flightSignal, () =>
        createRelease(url, downloaded, o),
      );
    } finally {
      await fs.rm(downloaded.file, { force: true });
    }
  });
}

function releaseDir(layout: PackageLayout, sha256: string): string {
  return path.join(layout.releases, sha256);
}

/** Whether an existing release can serve `url` without looking at its content again. */
async function holds(dir: string, url: PackageUrl): Promise<boolean> {
  if (!(await exists(dir))) return false;
  // A single-file release has its file under the name of the URL that brought it.
  return ARCHIVE_NAME.test(url.fileName) || exists(path.join(dir, url.fileName));
}

async function createRelease(url: PackageUrl, downloaded: Downloaded, o: ReleaseOptions): Promise<Release> {
  const { sha256 } = downloaded;
  const dir = releaseDir(o.layout, sha256);
  const format = await packageFormat(downloaded.file, url.fileName);
  if (await exists(dir)) {
    if (format === "file") await placeFile(downloaded.file, dir, url.fileName);
    o.log(`${url.display} is release ${sha256}, already installed`);
    return { dir, sha256 };
  }
  const temp = tempPath(o.layout.releases);
  await fs.mkdir(temp);
  try {
    if (format === "file") await placeFile(downloaded.file, temp, url.fileName);
    else await extractArchive(downloaded.file, format, temp, o.limits);
    if (await renameIntoPlace(temp, dir))
      o.log(`installed ${url.display} as release ${sha256} (${format}, ${downloaded.bytes} bytes)`);
    return { dir, sha256 };
  } catch (err) {
    await fs.rm(temp, { recursive: true, force: true });
    throw err;
  }
}

/** Moves a single-file package into `dir` as an executable `<name>`; the rename makes it appear whole. */
async function placeFile(file: string, dir: string, name: string): Promise<void> {
  const target = path.join(dir, name);
  if (await exists(target)) return;
  await fs.chmod(file, 0o755);
  await fs.rename(file, target);
}
