import { ignoreNotFound } from "@kiln/protocol";
import {
  type ApplicationInit,
  type KilnClient,
  type ObjectCache,
  packageLocation,
  packDirectory,
  packFile,
  publishPackage,
  type PackedArchive,
} from "@kiln/sdk";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { detectPackage, type DetectOptions, type DetectedPackage } from "./detect.js";

/** The package could not be uploaded to the object cache; exits with ExitCode.UploadFailed. */
export class UploadError extends Error {
  constructor(message: string, options: { cause: unknown }) {
    super(message, options);
    this.name = "UploadError";
  }
}

/** Everything `kiln deploy` registers besides the package. */
export interface DeployOptions extends DetectOptions {
  /** Application name; also the first component of the package's cache key. */
  name: string;
  /** gitignore-style patterns left out of a packed directory, on top of `.git` and `node_modules`. */
  excludes?: string[];
  environments?: Record<string, string>;
  labels?: string[];
  description?: string;
  workingDirectory?: string;
  maxInstances?: number;
  delayReleaseSeconds?: number;
  /** Detect and pack (to know the digest) but neither upload nor register. */
  dryRun?: boolean;
}

/** What `kiln deploy -o json` prints. */
export interface DeployResult {
  name: string;
  kind: DetectedPackage["kind"];
  installer: string;
  command: string;
  arguments: string[];
  /** How the command was chosen. */
  reason: string;
  key: string;
  url: string;
  sha256: string;
  size: number;
  /** False when the same content was already in the cache (or on a dry run). */
  uploaded: boolean;
  application: "registered" | "updated" | "dry-run";
}

/** Never packed: they are rebuilt on the node (node_modules by the node installer) or are not code. */
export const DEPLOY_EXCLUDES = [".git", "node_modules"];

/**
 * Detects, packs and uploads `target` content-addressed as
 * `<name>/pkg/<name>-<sha256 prefix>.tar.gz` (an unchanged package is not
 * uploaded again), then registers or updates application `name` to install
 * it from `cache://<key>#sha256=<digest>`, so every node verifies what it runs
 * and a redeploy of changed code always runs the new code.
 *
 * @example
 * const r = await deploy("./my-service", { name: "my-service" }, { client, cache });
 * console.log(r.url, r.application); // cache://my-service/pkg/my-service-1a2b….tar.gz#sha256=… registered
 */
export async function deploy(
  target: string,
  o: DeployOptions,
  deps: { client: KilnClient; cache: ObjectCache },
): Promise<DeployResult> {
  const detected = await detectPackage(target, o);
  const workDir = await fsp.mkdtemp(path.join(os.tmpdir(), "kiln-deploy-"));
  try {
    const archive = await packageOf(detected, workDir, o.excludes ?? []);
    const { key, url } = packageLocation(o.name, archive, archive.zip ? ".zip" : ".tar.gz");
    const result: DeployResult = {
      name: o.name,
      kind: detected.kind,
      installer: detected.installer,
      command: detected.command,
      arguments: detected.arguments,
      reason: detected.reason,
      key,
      url,
      sha256: archive.sha256,
      size: archive.size,
      uploaded: false,
      application: "dry-run",
    };
    if (o.dryRun) return result;

    result.uploaded = await upload(deps.cache, key, archive);
    const spec: ApplicationInit = {
      command: detected.command,
      arguments: detected.arguments,
      url,
      installer: detected.installer,
      ...(o.environments ? { environments: o.environments } : {}),
      ...(o.labels ? { labels: o.labels } : {}),
      ...(o.description !== undefined ? { description: o.description } : {}),
      ...(o.workingDirectory !== undefined ? { workingDirectory: o.workingDirectory } : {}),
      ...(o.maxInstances !== undefined ? { maxInstances: o.maxInstances } : {}),
      ...(o.delayReleaseSeconds !== undefined ? { delayReleaseSeconds: o.delayReleaseSeconds } : {}),
    };
    const exists = (await deps.client.getApplication(o.name).catch(ignoreNotFound)) !== undefined;
    if (exists) await deps.client.updateApplication(o.name, spec);
    else await deps.client.registerApplication(o.name, spec);
    result.application = exists ? "updated" : "registered";
    return result;
  } finally {
    await fsp.rm(workDir, { recursive: true, force: true });
  }
}

type Archive = Pick<PackedArchive, "file" | "sha256" | "size"> & { zip: boolean };

async function packageOf(detected: DetectedPackage, workDir: string, excludes: string[]): Promise<Archive> {
  const out = path.join(workDir, "package.tar.gz");
  switch (detected.kind) {
    case "node-project":
    case "directory":
      return {
        ...(await packDirectory(detected.source, out, { excludes: [...DEPLOY_EXCLUDES, ...excludes] })),
        zip: false,
      };
    case "executable":
      return { ...(await packFile(detected.source, out)), zip: false };
    case "archive":
      return { file: detected.source, ...(await digestOf(detected.source)), zip: /\.zip$/i.test(detected.source) };
  }
}

async function digestOf(file: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  await pipeline(fs.createReadStream(file), hash);
  return { sha256: hash.digest("hex"), size: (await fsp.stat(file)).size };
}

/** Uploads unless the cache already holds this content under `key`; returns whether it uploaded. */
async function upload(cache: ObjectCache, key: string, archive: Archive): Promise<boolean> {
  try {
    return await publishPackage(cache, key, archive);
  } catch (err) {
    throw new UploadError(`cannot upload the package to ${cache.endpoint}: ${(err as Error).message}`, { cause: err });
  }
}
