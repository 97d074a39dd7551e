import * as v8 from "node:v8";

const FLAG = "--heap-growing-percent";

/**
 * Lets V8's old generation grow to at most one and a half times what was live after the last full collection,
 * instead of up to four times under load. A server's finished work dies in the old generation (a
 * task lives from creation to finish, long enough to be promoted), so with V8's default the control
 * plane's RSS settled at about four times its working set; with this well under half that, for no
 * throughput we could measure (docs/design-notes.md). V8 reads the flag at every collection, so
 * setting it once the process runs takes effect (NODE_OPTIONS may not carry it). One given to node on
 * the command line wins.
 */
export function boundHeapGrowth(percent = 50): void {
  if (process.execArgv.some((arg) => arg.startsWith(FLAG) || arg.startsWith("--heap_growing_percent"))) return;
  v8.setFlagsFromString(`${FLAG}=${percent}`);
}
