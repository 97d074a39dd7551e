import * as fs from "node:fs/promises";
import { checkLinksStayInside } from "./archive-entries.js";
import { ExtractionBudget, type ExtractionLimits } from "./extraction-limits.js";
import { extractTarGz } from "./tar-extract.js";
import { extractZip } from "./zip-extract.js";

export type PackageFormat = "tar.gz" | "zip" | "file";

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZIP_MAGICS = [Buffer.from("PK\x03\x04", "latin1"), Buffer.from("PK\x05\x06", "latin1")];

async function head(file: string): Promise<Buffer> {
  const handle = await fs.open(file, "r");
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await handle.read(buf, 0, 4, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

const isGzip = (h: Buffer) => h.subarray(0, 2).equals(GZIP_MAGIC);
const isZip = (h: Buffer) => ZIP_MAGICS.some((m) => h.equals(m));

/**
 * How to install a downloaded package. A name ending in .tar.gz/.tgz or .zip
 * must be that archive (checked by its magic bytes, so a corrupt or mislabeled
 * file fails); a name with no extension at all (e.g. a download endpoint)
 * is an archive if its magic says so; anything else is a single file.
 *
 * @example
 * await packageFormat("/tmp/.tmp-1-ab.part", "app.tgz") // "tar.gz"
 */
export async function packageFormat(file: string, fileName: string): Promise<PackageFormat> {
  const magic = await head(file);
  const lower = fileName.toLowerCase();
  if (lower.endsWith(".tar.gz") || lower.endsWith(".tgz")) {
    if (!isGzip(magic)) throw new Error(`corrupt .tar.gz: ${fileName} is not gzip data`);
    return "tar.gz";
  }
  if (lower.endsWith(".zip")) {
    if (!isZip(magic)) throw new Error(`corrupt .zip: ${fileName} is not zip data`);
    return "zip";
  }
  if (!fileName.includes(".")) {
    if (isGzip(magic)) return "tar.gz";
    if (isZip(magic)) return "zip";
  }
  return "file";
}

/**
 * Extracts an archive into `dest` (an empty temp dir) within `limits`, and checks that no
 * symlink in the result leads outside it. Throws naming the offending entry, or the limit
 * (PackageLimitError) before writing the entry that would pass it.
 */
export async function extractArchive(
  file: string,
  format: "tar.gz" | "zip",
  dest: string,
  limits: ExtractionLimits,
): Promise<void> {
  const budget = new ExtractionBudget(limits, (await fs.stat(file)).size);
  await (format === "zip" ? extractZip(file, dest, budget) : extractTarGz(file, dest, budget));
  await checkLinksStayInside(dest);
}
