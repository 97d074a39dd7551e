/**
 * The generated protobuf types, grouped by protobuf package: `flame.v1`
 * (Flame's wire schema) and `kiln.v1` (Kiln's additions).
 *
 * @example
 * import { flame, kiln } from "@kiln/protocol/proto";
 * const state = flame.TaskState.Succeed;
 */
export * as flame from "./flame.js";
export * as kiln from "./kiln.js";
