/**
 * The Kiln client SDK: connect to a cluster, run tasks in sessions, use the
 * object cache, run your own TypeScript remotely (Runner), run commands as
 * jobs. The errors, the codec and ObjectRef come from `@kiln/protocol` and
 * are re-exported here, so a client needs only this package; a service
 * imports `@kiln/service`.
 */
export {
  ErrorCode,
  KilnError,
  NotFoundError,
  AlreadyExistsError,
  InvalidArgumentError,
  FailedPreconditionError,
  UnauthenticatedError,
  TimeoutError,
  TaskFailedError,
  OutcomeUnknownError,
  isNotFound,
  ignoreNotFound,
  toKilnError,
  parseResreq,
  formatResreq,
  type Resources,
  type ResourceRequest,
  ObjectRef,
  isObjectRef,
  encodeObjectRef,
  decodeObjectRef,
  type ObjectRefInit,
  encodeValue,
  decodeValue,
  CodecError,
  CODEC_FORMAT_VERSION,
  type EncodeOptions,
  SessionEvent,
  describeEventCode,
  type SessionEventCode,
} from "@kiln/protocol";
export { connect, KilnClient, type SessionsChange } from "./client/client.js";
export {
  loadConfig,
  normalizeEndpoint,
  DEFAULT_ENDPOINT,
  type ConnectOptions,
  type LoadConfigOptions,
  type ResolvedConfig,
} from "./client/config.js";
export { Session } from "./client/session.js";
export type { ApplicationInit, SessionOptions } from "./client/specs.js";
export type { TaskUpdate } from "./client/task-update.js";
export {
  loadCacheConfig,
  DEFAULT_CACHE_ENDPOINT,
  type CacheConfigOptions,
  type ResolvedCacheConfig,
} from "./client/config.js";
export { discoverCacheConfig, openObjectCache, type DiscoverCacheOptions } from "./client/cache-discovery.js";
export { readTlsFiles, type TlsFile, type TlsFiles, type TlsFileOptions } from "./client/tls-config.js";
export type { TlsClientOptions } from "@kiln/protocol/transport";
export {
  ObjectCache,
  objectCacheFor,
  type ObjectCacheOptions,
  type ObjectTarget,
  type GetObjectOptions,
  type ObjectStat,
} from "./objects/cache-client.js";
export {
  putObject,
  getObject,
  updateObject,
  patchObject,
  deleteObjects,
  uploadObject,
  downloadObject,
  statObject,
  listObjects,
  defaultObjectCache,
  configureObjects,
} from "./objects/objects.js";
export { defaultMerge, type MergeFunction } from "./objects/merge.js";
export {
  getData,
  GetDataError,
  DEFAULT_MAX_DEPTH,
  type GetDataErrorKind,
  type GetDataOptions,
  type RunnerData,
  type InputData,
  type OutputData,
  type ServiceData,
} from "./runner/get-data.js";
export { Runner, RunnerModule, type RunnerOptions, type FutureValues } from "./runner/runner.js";
export { ObjectFuture } from "./runner/object-future.js";
export type { RemoteError } from "./runner/remote-call.js";
export type {
  RemoteArg,
  RemoteArgs,
  RemoteFunction,
  RemoteInstance,
  RemoteService,
  ServiceExport,
  ServiceOptions,
  CommonServiceOptions,
  ClassServiceOptions,
} from "./runner/types.js";
export type { CapturedOutput } from "@kiln/protocol/runner";
export {
  runJob,
  getJobResult,
  fetchOutputs,
  outputsForLevel,
  validateJob,
  JobFailedError,
  DEFAULT_JOB_TIMEOUT_MS,
  type JobOptions,
  type JobInputFile,
  type JobTaskResult,
  type FetchOutputsOptions,
} from "./jobs/job-client.js";
export {
  DEFAULT_LEVELS,
  validateOutputSpec,
  JOB_APPLICATION,
  type DeclaredOutput,
  type JobSpec,
  type JobResult,
  type OutputReport,
  type PersistedOutput,
  type OutputSpec,
  type OutputLevel,
  type ScriptInterpreter,
} from "@kiln/protocol/jobs";
export { packDirectory, packFile, type PackOptions, type PackedArchive } from "./packaging/pack-directory.js";
export { packageLocation, publishPackage } from "./packaging/publish-package.js";
