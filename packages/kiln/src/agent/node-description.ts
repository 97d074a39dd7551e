import { create } from "@bufbuild/protobuf";
import { InvalidArgumentError, validateName } from "@kiln/protocol";
import { kiln } from "@kiln/protocol/proto";
import * as os from "node:os";

export interface NodeCapacityOptions {
  name?: string;
  executors?: number;
  cpus?: number;
  memoryBytes?: number;
  gpus?: number;
}

/**
 * GPUs this process may use, as CUDA sees them: the entries of
 * CUDA_VISIBLE_DEVICES (unset, empty, or "-1"/"NoDevFiles" = none).
 */
export function visibleGpuCount(env: NodeJS.ProcessEnv = process.env): number {
  const value = env.CUDA_VISIBLE_DEVICES?.trim();
  if (!value || value === "-1" || value === "NoDevFiles") return 0;
  return value.split(",").filter((d) => d.trim() !== "").length;
}

function wholeNumber(field: string, value: number | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || value < min)
    throw new InvalidArgumentError(field, `must be a whole number of at least ${min} (got ${value})`);
  return value;
}

/**
 * What this node tells the control plane about itself: the real machine,
 * with any capacity the operator chose to advertise instead.
 *
 * @example
 * describeNode({ executors: 4 }).maxExecutors // 4
 */
export function describeNode(o: NodeCapacityOptions = {}): kiln.NodeDescription {
  const hostname = os.hostname();
  const name = validateName("name", o.name ?? hostname);
  return create(kiln.NodeDescriptionSchema, {
    name,
    hostname,
    capacity: {
      cpu: BigInt(wholeNumber("cpus", o.cpus, 1) ?? os.availableParallelism()),
      memory: BigInt(wholeNumber("memoryBytes", o.memoryBytes, 1) ?? os.totalmem()),
      gpu: wholeNumber("gpus", o.gpus, 0) ?? visibleGpuCount(),
    },
    arch: os.arch(),
    os: os.platform(),
    maxExecutors: wholeNumber("executors", o.executors, 1) ?? os.availableParallelism(),
  });
}
