import * as path from "node:path";

/** An application's package URL, split into what downloaders and messages need. */
export interface PackageUrl {
  /** The URL without its fragment. */
  location: string;
  /** Lower case, without the colon: `file`, `http`, `cache`, ... */
  scheme: string;
  /** The fragment, without `#`; "" when there is none. */
  fragment: string;
  /** The last path component: the name of a single-file package and a hint for its format. */
  fileName: string;
  /** For messages and logs: without credentials, query values or fragment. */
  display: string;
}

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;
const FALLBACK_NAME = "package";

/**
 * Splits a package URL; throws when it has no scheme at all.
 *
 * @example
 * parsePackageUrl("https://u:pw@example.com/app.tar.gz?sig=x#sha256=ab…")
 * // { scheme: "https", fileName: "app.tar.gz", display: "https://example.com/app.tar.gz?…", ... }
 */
export function parsePackageUrl(url: string): PackageUrl {
  const scheme = SCHEME.exec(url)?.[1]?.toLowerCase();
  if (!scheme) throw new Error(`"${url}" is not a URL (expected file://, http://, https:// or cache://)`);
  const hash = url.indexOf("#");
  const location = hash < 0 ? url : url.slice(0, hash);
  const fragment = hash < 0 ? "" : url.slice(hash + 1);
  if (scheme === "cache") {
    const key = location.slice("cache://".length);
    return { location, scheme, fragment, fileName: safeFileName(key.split("/").at(-1)), display: location };
  }
  let parsed: URL;
  try {
    parsed = new URL(location);
  } catch {
    return { location, scheme, fragment, fileName: FALLBACK_NAME, display: location };
  }
  const fileName = safeFileName(decodeOrUndefined(parsed.pathname.split("/").at(-1)));
  parsed.username = "";
  parsed.password = "";
  const query = parsed.search ? "?…" : "";
  parsed.search = "";
  return { location, scheme, fragment, fileName, display: `${parsed.href}${query}` };
}

function decodeOrUndefined(component: string | undefined): string | undefined {
  try {
    return component === undefined ? undefined : decodeURIComponent(component);
  } catch {
    return undefined;
  }
}

/** A name that is one plain path component, so placing the file cannot leave the release. */
function safeFileName(name: string | undefined): string {
  if (!name || name === "." || name === ".." || name !== path.basename(name) || /[\\\0]/.test(name))
    return FALLBACK_NAME;
  return name;
}
