/** The object cache's own HTTP formats: multi-part reads (parts.ts) and request batches (batch-format.ts). */
export * from "./parts.js";
export * from "./batch-format.js";
