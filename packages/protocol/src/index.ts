/**
 * What every Kiln package shares: the stable error codes and typed errors,
 * the session event codes, the rules for names, resources and sizes, the value codec and ObjectRef,
 * and the small helpers both sides of a connection use.
 *
 * The generated protobuf types are in `@kiln/protocol/proto`, the gRPC
 * transports in `@kiln/protocol/transport`, and the records of the Runner,
 * of jobs and of the object cache's HTTP formats in `@kiln/protocol/runner`,
 * `@kiln/protocol/jobs` and `@kiln/protocol/cache`.
 */
export * from "./errors.js";
export {
  validateName,
  parseResreq,
  parseBytes,
  formatResreq,
  formatBytes,
  formatMemory,
  type Resources,
  type ResourceRequest,
} from "./validation.js";
export {
  encodeValue,
  decodeValue,
  encodeObjectRef,
  decodeObjectRef,
  CodecError,
  CODEC_FORMAT_VERSION,
  type EncodeOptions,
} from "./codec/index.js";
export { ObjectRef, isObjectRef, type ObjectRefInit } from "./objects/object-ref.js";
export { validateObjectKey, validateObjectPrefix, validateListPrefix } from "./objects/keys.js";
export { sha256Hex, Sha256Counter } from "./digest.js";
export { withTimeout } from "./with-timeout.js";
export { processExists } from "./process-exists.js";
export { AsyncQueue, untilAborted, type QueueHooks } from "./async-queue.js";
export { SessionEvent, describeEventCode, eventMessage, bindFailureEvent, type SessionEventCode } from "./events.js";
