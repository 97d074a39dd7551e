import type { PackageUrl } from "./package-url.js";

/** Application label that pins the package's content: `kiln.sha256=<64 hex digits>`. */
export const DIGEST_LABEL = "kiln.sha256";
const FRAGMENT_PREFIX = "sha256=";
const SHA256_HEX = /^[0-9a-f]{64}$/;

function parseDigest(where: string, value: string): string {
  const digest = value.toLowerCase();
  if (!SHA256_HEX.test(digest)) throw new Error(`${where} "${value}" is not a sha256 digest (64 hex digits)`);
  return digest;
}

/**
 * The sha256 the package must have, from the URL fragment `#sha256=<hex>` or
 * the label `kiln.sha256=<hex>`; undefined when neither names one. Throws on a
 * malformed digest, an unknown fragment, or two digests that disagree.
 *
 * @example
 * expectedSha256(parsePackageUrl("file:///p/app.tgz#sha256=9f…"), []) // "9f…"
 */
export function expectedSha256(url: PackageUrl, labels: readonly string[]): string | undefined {
  let fromUrl: string | undefined;
  if (url.fragment !== "") {
    if (!url.fragment.startsWith(FRAGMENT_PREFIX))
      throw new Error(`URL fragment "#${url.fragment}" is not supported: use #sha256=<64 hex digits>`);
    fromUrl = parseDigest("URL digest", url.fragment.slice(FRAGMENT_PREFIX.length));
  }
  const label = labels.find((l) => l.startsWith(`${DIGEST_LABEL}=`));
  const fromLabel = label ? parseDigest(`label ${DIGEST_LABEL}`, label.slice(DIGEST_LABEL.length + 1)) : undefined;
  if (fromUrl && fromLabel && fromUrl !== fromLabel)
    throw new Error(`the URL digest sha256=${fromUrl} and label ${DIGEST_LABEL}=${fromLabel} disagree`);
  return fromUrl ?? fromLabel;
}
