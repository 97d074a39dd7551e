import { ErrorCode, ignoreNotFound, KilnError } from "@kiln/protocol";
import type { ObjectCache } from "../objects/cache-client.js";
import type { PackedArchive } from "./pack-directory.js";

/**
 * Where application `app`'s package with this content lives: the cache key
 * `<app>/pkg/<app>-<sha256 prefix><extension>` (content-addressed, so
 * changed code gets a new key and a redeploy can never run stale code) and
 * the `cache://` URL the application points at, carrying the digest every
 * node checks before it installs.
 *
 * @example
 * packageLocation("calc", { sha256: "1a2b…" }); // { key: "calc/pkg/calc-1a2b….tar.gz", url: "cache://calc/pkg/…#sha256=1a2b…" }
 */
export function packageLocation(
  app: string,
  archive: Pick<PackedArchive, "sha256">,
  extension = ".tar.gz",
): { key: string; url: string } {
  const key = `${app}/pkg/${app}-${archive.sha256.slice(0, 16)}${extension}`;
  return { key, url: `cache://${key}#sha256=${archive.sha256}` };
}

/**
 * Uploads a packed archive to `key` unless the cache already holds the same
 * content there (compared by sha256), and checks what the cache stored.
 * Returns whether it uploaded. Keys are content-addressed by the callers
 * (`kiln deploy`, `Runner.open`), so an unchanged package is never sent twice.
 *
 * @example
 * const pkg = await packDirectory(".", "/tmp/app.tar.gz");
 * const uploaded = await publishPackage(cache, packageLocation("app", pkg).key, pkg);
 */
export async function publishPackage(
  cache: ObjectCache,
  key: string,
  archive: Pick<PackedArchive, "file" | "sha256">,
): Promise<boolean> {
  const existing = await cache.statObject(key).catch(ignoreNotFound);
  if (existing?.sha256 === archive.sha256) return false;
  const ref = await cache.uploadObject(key, archive.file);
  if (ref.sha256 !== archive.sha256)
    throw new KilnError(
      ErrorCode.Internal,
      `the cache stored sha256 ${ref.sha256} at ${key}, not the package's ${archive.sha256}`,
    );
  return true;
}
