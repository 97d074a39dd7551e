import { kiln, type flame } from "@kiln/protocol/proto";
import type { TlsClientOptions } from "@kiln/protocol/transport";
import { BindError, errorMessage } from "./bind-error.js";
import { installBinary } from "./packages/binary-installer.js";
import { expectedSha256 } from "./packages/digest.js";
import { packageLayout, prepareLayout, type PackageLayout } from "../package-store/layout.js";
import { installNode } from "./packages/node-installer.js";
import { parsePackageUrl } from "./packages/package-url.js";
import {
  DEFAULT_MAX_PACKAGE_BYTES,
  DEFAULT_MAX_PACKAGE_ENTRIES,
  type ExtractionLimits,
} from "./packages/extraction-limits.js";
import { obtainRelease } from "./packages/releases.js";

/** An installed package: the service's default working directory and what it adds to the environment. */
export interface InstalledRelease {
  dir: string;
  env: Record<string, string>;
}

/** How this agent delivers packages; set once per agent. */
export interface PackageSettings {
  /** The agent's work dir; packages live under `<workDir>/packages`. */
  workDir: string;
  /** The object cache that `cache://<key>` URLs name, e.g. http://127.0.0.1:7422. */
  cacheEndpoint?: string;
  cacheToken?: string;
  /** For an https cache endpoint: its CA, and the agent's client certificate. */
  cacheTls?: TlsClientOptions;
  /** Whole download; default 120 000. */
  downloadTimeoutMs?: number;
  /** Connecting, first byte, and any pause in a download; default 10 000. */
  connectTimeoutMs?: number;
  /** One installer run (npm ci); default 600 000. */
  installTimeoutMs?: number;
  /** What one package may extract to (defaults: 4 GiB, 100,000 entries). */
  limits?: Partial<ExtractionLimits>;
}

export interface InstallContext extends PackageSettings {
  log(line: string): void;
  /** Abandons the install for this caller (others sharing it carry on). */
  signal?: AbortSignal;
}

export const DEFAULT_DOWNLOAD_TIMEOUT_MS = 120_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_INSTALL_TIMEOUT_MS = 600_000;

type Installer = (dir: string, layout: PackageLayout, ctx: InstallContext) => Promise<Record<string, string>>;

const installers: ReadonlyMap<string, Installer> = new Map<string, Installer>([
  ["", async () => ({})],
  ["binary", (dir) => installBinary(dir)],
  [
    "node",
    (dir, layout, ctx) =>
      installNode(dir, {
        layout,
        installTimeoutMs: ctx.installTimeoutMs ?? DEFAULT_INSTALL_TIMEOUT_MS,
        log: ctx.log,
        signal: ctx.signal,
      }),
  ],
]);

function installerFor(name: string): Installer {
  const installer = installers.get(name);
  if (!installer)
    throw new Error(
      `unknown installer "${name}" (known: ${[...installers.keys()].filter(Boolean).join(", ")}, or none)`,
    );
  return installer;
}

/**
 * Makes an application's package available on this node before its process
 * starts: download (file, http, https or cache URL), verify the digest when
 * the URL (`#sha256=…`) or a `kiln.sha256=…` label names one, extract into a
 * release keyed by the content's sha256, and run the application's installer.
 * Undefined when the application has no URL. Any failure is a
 * BindError(INSTALL) naming the URL; nothing is remembered about it, so the
 * next bind tries again.
 *
 * @example
 * const release = await installApplication(spec, { workDir: "/var/lib/kiln", log: console.log });
 * // release?.dir is the working directory, release?.env has KILN_APP_DIR and PATH
 */
export async function installApplication(
  application: flame.ApplicationSpec,
  ctx: InstallContext,
): Promise<InstalledRelease | undefined> {
  if (!application.url) return undefined;
  let shown = application.url;
  try {
    const url = parsePackageUrl(application.url);
    shown = url.display;
    const installer = installerFor(application.installer ?? "");
    const expected = expectedSha256(url, application.labels);
    const layout = packageLayout(ctx.workDir);
    await prepareLayout(layout);
    const release = await obtainRelease(
      url,
      expected,
      {
        layout,
        limits: {
          maxBytes: ctx.limits?.maxBytes ?? DEFAULT_MAX_PACKAGE_BYTES,
          maxEntries: ctx.limits?.maxEntries ?? DEFAULT_MAX_PACKAGE_ENTRIES,
        },
        log: ctx.log,
        cacheEndpoint: ctx.cacheEndpoint,
        cacheToken: ctx.cacheToken,
        ...(ctx.cacheTls ? { cacheTls: ctx.cacheTls } : {}),
        downloadTimeoutMs: ctx.downloadTimeoutMs ?? DEFAULT_DOWNLOAD_TIMEOUT_MS,
        idleTimeoutMs: ctx.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      },
      ctx.signal,
    );
    const env = await installer(release.dir, layout, ctx);
    return { dir: release.dir, env: { KILN_APP_DIR: release.dir, FLAME_APP_DIR: release.dir, ...env } };
  } catch (err) {
    throw new BindError(kiln.BindFailure.INSTALL, `cannot install package ${shown}: ${errorMessage(err)}`);
  }
}
