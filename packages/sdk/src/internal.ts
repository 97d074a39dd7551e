/**
 * Helpers shared by the SDK and the Kiln servers. Not part of the public
 * API: they may change between minor versions.
 */
export { validateName, parseResreq, parseBytes, formatResreq, formatBytes, type Resources } from "./validation.js";
export { toConnectError, toKilnError, ERROR_CODE_HEADER } from "./errors.js";
export { createClusterTransport, createUnixSocketTransport, TOKEN_HEADER } from "./transport/cluster-transport.js";
export { StreamRoutes, type StreamServerOptions } from "./transport/stream-server.js";
export { translateErrors } from "./transport/translate-errors.js";
export { AsyncQueue, untilAborted } from "./async-queue.js";
export { BatchQueue } from "./service/batch-queue.js";
export { LazyAbort } from "./service/lazy-abort.js";
export { acceptsConnections } from "./service/socket-path.js";
export { validateObjectKey, validateObjectPrefix, validateListPrefix } from "./objects/keys.js";
export * from "./objects/parts.js";
export * from "./objects/batch-format.js";
export { packDirectory, packFile, type PackOptions, type PackedArchive } from "./packaging/pack-directory.js";
export { processExists } from "./process-exists.js";
export * from "./runner/protocol.js";
export { packageLocation, publishPackage } from "./packaging/publish-package.js";
export { RUNNER_TEMPLATE, RUNNER_PACKAGE_ENV, checkDependencySpec } from "./runner/runner.js";
export * from "./jobs/protocol.js";
export * from "./jobs/output-spec.js";
export * from "./jobs/job-rules.js";
export { sha256Hex, Sha256Counter } from "./digest.js";
export { withTimeout } from "./with-timeout.js";
