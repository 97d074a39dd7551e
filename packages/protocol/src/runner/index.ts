/** What a Runner client and the `kiln-run` service say to each other (see records.ts). */
export * from "./records.js";
