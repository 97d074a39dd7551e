export * from "./errors.js";
export { parseResreq, formatResreq, type Resources } from "./validation.js";
export { connect, KilnClient } from "./client/client.js";
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
  serve,
  TaskFailure,
  type ServeOptions,
  type ServiceHandle,
  type ServiceHandlers,
  type SessionContextInfo,
  type TaskContextInfo,
} from "./service/index.js";
export {
  loadCacheConfig,
  DEFAULT_CACHE_ENDPOINT,
  type CacheConfigOptions,
  type ResolvedCacheConfig,
} from "./client/config.js";
export { discoverCacheConfig, openObjectCache, type DiscoverCacheOptions } from "./client/cache-discovery.js";
export {
  ObjectCache,
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
export { ObjectRef, encodeObjectRef, decodeObjectRef, type ObjectRefInit } from "./objects/object-ref.js";
export { encodeValue, decodeValue, CodecError, CODEC_FORMAT_VERSION, type EncodeOptions } from "./codec/index.js";
export { isObjectRef } from "./objects/object-ref.js";
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
export type { CapturedOutput } from "./runner/protocol.js";
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
export { DEFAULT_LEVELS, validateOutputSpec, type DeclaredOutput } from "./jobs/output-spec.js";
export { JOB_APPLICATION } from "./jobs/protocol.js";
export type {
  JobSpec,
  JobResult,
  OutputReport,
  PersistedOutput,
  OutputSpec,
  OutputLevel,
  ScriptInterpreter,
} from "./jobs/protocol.js";
