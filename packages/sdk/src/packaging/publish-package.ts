import { ErrorCode, ignoreNotFound, KilnError } from "../errors.js";
import type { ObjectCache } from "../objects/cache-client.js";
import type { PackedArchive } from "./pack-directory.js";

/**
 * Uploads a packed archive to `key` unless the cache already holds the same
 * content there (compared by sha256), and checks what the cache stored.
 * Returns whether it uploaded. Keys are content-addressed by the callers
 * (`kiln deploy`, `Runner.open`), so an unchanged package is never sent twice.
 *
 * @example
 * const pkg = await packDirectory(".", "/tmp/app.tar.gz");
 * const uploaded = await publishPackage(cache, `app/pkg/app-${pkg.sha256.slice(0, 16)}.tar.gz`, pkg);
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
