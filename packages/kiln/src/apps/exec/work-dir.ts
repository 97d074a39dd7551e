import { isObjectRef, InvalidArgumentError } from "@kiln/protocol";
import { type ObjectCache } from "@kiln/sdk";
import { RESERVED_DIRS, type JobInput } from "@kiln/protocol/jobs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";

/** A job's fresh working directory and the executor's own corner of it (RESERVED_DIRS[0]: never listed or collected). */
export interface WorkDir {
  root: string;
  /** `<root>/.kiln`: the script file lives here. */
  own: string;
  /** `<root>/.kiln/tmp`: the command's TMPDIR, gone with the directory. */
  tmp: string;
}

/**
 * Creates a fresh working directory for one task under `parent`.
 *
 * @example
 * const dir = await createWorkDir(os.tmpdir(), "7"); // { root: "/tmp/…/job-7-Ab3xYz", … }
 */
export async function createWorkDir(parent: string, taskId: string): Promise<WorkDir> {
  const root = await fsp.mkdtemp(path.join(parent, `job-${taskId.replace(/[^\w-]/g, "_")}-`));
  const own = path.join(root, RESERVED_DIRS[0]!);
  const tmp = path.join(own, "tmp");
  await fsp.mkdir(tmp, { recursive: true });
  return { root, own, tmp };
}

/**
 * Writes a job's input files into its working directory: inline bytes, or
 * an object fetched from `cache` (only the configured cache: a ref naming
 * another endpoint is refused). Paths must already be validated; files are
 * created exclusively, so nothing existing is overwritten or followed.
 *
 * @example
 * await placeInputs(dir.root, spec.inputs, cache);
 */
export async function placeInputs(root: string, inputs: readonly JobInput[], cache: ObjectCache): Promise<void> {
  for (const [i, input] of inputs.entries()) {
    const target = path.join(root, ...input.path.split("/"));
    await fsp.mkdir(path.dirname(target), { recursive: true });
    if (input.data instanceof Uint8Array && input.ref === undefined) {
      await fsp.writeFile(target, input.data, { flag: "wx" });
    } else if (isObjectRef(input.ref) && input.data === undefined) {
      // The content the job was given, not whatever the key holds by the time it runs.
      await cache.downloadObject(input.ref, target, { sha256: input.ref.sha256 });
    } else {
      throw new InvalidArgumentError(`job.inputs[${i}]`, "needs exactly one of data (bytes) and ref (an object ref)");
    }
    await fsp.chmod(target, input.mode ?? 0o644);
  }
}
