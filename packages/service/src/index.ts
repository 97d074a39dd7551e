export { serve, type ServeOptions, type ServiceHandle } from "./serve.js";
export { TaskFailure } from "./handlers.js";
export type { ServiceHandlers, SessionContextInfo, TaskContextInfo } from "./handlers.js";
