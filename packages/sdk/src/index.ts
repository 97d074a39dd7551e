export * from "./errors.js";
export { parseResreq, formatResreq, type Resources } from "./validation.js";
