/** Jobs: the records a `kiln-exec` task carries, and the rules for commands and declared outputs. */
export * from "./records.js";
export * from "./output-spec.js";
export * from "./job-rules.js";
