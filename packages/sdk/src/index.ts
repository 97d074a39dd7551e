export * from "./errors.js";
export { parseResreq, formatResreq, type Resources } from "./validation.js";
export { connect, KilnClient } from "./client/client.js";
export {
  loadConfig,
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
  type ServeOptions,
  type ServiceHandle,
  type ServiceHandlers,
  type SessionContextInfo,
  type TaskContextInfo,
} from "./service/index.js";
