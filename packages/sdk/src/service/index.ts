export { serve, type ServeOptions, type ServiceHandle } from "./serve.js";
export type { ServiceHandlers, SessionContextInfo, TaskContextInfo } from "./handlers.js";
