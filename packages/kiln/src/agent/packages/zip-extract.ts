import * as fs from "node:fs";
import * as path from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import yauzl from "yauzl";
import { checkEntryPath, checkSymlinkTarget, UnsafeEntryError } from "./archive-entries.js";
import { PackageLimitError, type ExtractionBudget } from "./extraction-limits.js";

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const MAX_LINK_TARGET_BYTES = 4096;

interface PendingLink {
  name: string;
  target: string;
}

function openZip(file: string): Promise<yauzl.ZipFile> {
  return new Promise((resolve, reject) =>
    // decodeStrings: false, so every name goes through our checks (and our messages) rather than yauzl's.
    yauzl.open(file, { lazyEntries: true, autoClose: false, decodeStrings: false }, (err, zip) =>
      err ? reject(err) : resolve(zip),
    ),
  );
}

function nextEntry(zip: yauzl.ZipFile): Promise<yauzl.Entry | undefined> {
  return new Promise((resolve, reject) => {
    const settle = (fn: () => void) => {
      zip.off("entry", onEntry).off("end", onEnd).off("error", onError);
      fn();
    };
    const onEntry = (entry: yauzl.Entry) => settle(() => resolve(entry));
    const onEnd = () => settle(() => resolve(undefined));
    const onError = (err: Error) => settle(() => reject(err));
    zip.on("entry", onEntry).on("end", onEnd).on("error", onError);
    zip.readEntry();
  });
}

function openEntry(zip: yauzl.ZipFile, entry: yauzl.Entry): Promise<Readable> {
  return new Promise((resolve, reject) =>
    zip.openReadStream(entry, (err, stream) => (err ? reject(err) : resolve(stream))),
  );
}

async function readLinkTarget(zip: yauzl.ZipFile, entry: yauzl.Entry, name: string): Promise<string> {
  if (entry.uncompressedSize > MAX_LINK_TARGET_BYTES) throw new UnsafeEntryError(name, "symlink target too long");
  const chunks: Buffer[] = [];
  for await (const chunk of await openEntry(zip, entry)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** A link made under another link from the archive could land outside the release: refuse it. */
function checkLinksNotNested(links: readonly PendingLink[]): void {
  const names = new Set(links.map((l) => path.posix.normalize(l.name)));
  for (const link of links) {
    const parts = path.posix.normalize(link.name).split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join("/");
      if (names.has(parent)) throw new UnsafeEntryError(link.name, `symlink inside symlink ${parent}`);
    }
  }
}

/**
 * Extracts a .zip into `dest` (an empty dir). Files and directories are
 * written first and symlinks made last, so no write can pass through a link
 * from the archive; the first unsafe entry, or the first past a limit of
 * `budget`, fails the whole extraction.
 *
 * @example
 * await extractZip("/tmp/app.zip", "/work/packages/releases/.tmp-1-ab", new ExtractionBudget(limits, size));
 */
export async function extractZip(file: string, dest: string, budget: ExtractionBudget): Promise<void> {
  let zip: yauzl.ZipFile;
  try {
    zip = await openZip(file);
  } catch (err) {
    throw new Error(`corrupt .zip: ${(err as Error).message}`, { cause: err });
  }
  const links: PendingLink[] = [];
  try {
    for (let entry = await nextEntry(zip); entry; entry = await nextEntry(zip)) {
      const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, false);
      checkEntryPath(name);
      // yauzl checks that an entry inflates to exactly its declared size, so the declared size is what is written.
      budget.add(name, entry.uncompressedSize);
      const mode = (entry.externalFileAttributes >>> 16) & 0xffff;
      const kind = mode & S_IFMT;
      const target = path.join(dest, name);
      if (name.endsWith("/") || kind === S_IFDIR) {
        await fs.promises.mkdir(target, { recursive: true });
      } else if (kind === S_IFLNK) {
        const linkTarget = await readLinkTarget(zip, entry, name);
        checkSymlinkTarget(name, linkTarget);
        links.push({ name, target: linkTarget });
      } else if (kind === 0 || kind === S_IFREG) {
        await fs.promises.mkdir(path.dirname(target), { recursive: true });
        // "wx": a second entry with the same name fails instead of overwriting the first.
        const out = fs.createWriteStream(target, { flags: "wx", mode: mode & 0o777 || 0o644 });
        await pipeline(await openEntry(zip, entry), out);
      } else {
        throw new UnsafeEntryError(name, `file type 0o${kind.toString(8)} (only files, directories and symlinks)`);
      }
    }
    checkLinksNotNested(links);
    for (const link of links) {
      await fs.promises.mkdir(path.dirname(path.join(dest, link.name)), { recursive: true });
      await fs.promises.symlink(link.target, path.join(dest, link.name));
    }
  } catch (err) {
    if (err instanceof UnsafeEntryError || err instanceof PackageLimitError) throw err;
    throw new Error(`corrupt .zip: ${(err as Error).message}`, { cause: err });
  } finally {
    zip.close();
  }
}
