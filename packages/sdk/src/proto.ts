/**
 * Generated protocol types, grouped by protobuf package.
 *
 * @example
 * import { flame, kiln } from "@kiln/sdk/proto";
 * const state = flame.TaskState.Succeed;
 */
export * as flame from "./protocol/flame.js";
export * as kiln from "./protocol/kiln.js";
