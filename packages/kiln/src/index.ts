/**
 * Kiln's servers as a library, for programs and tests that start a cluster
 * themselves: `kiln up` (startLocalCluster) and each process it is made of.
 * The `kiln` command line is this package's bin.
 *
 * @example
 * import { startLocalCluster } from "kiln";
 * const cluster = await startLocalCluster({ dataDir: "/tmp/kiln", port: 0 });
 * // … connect({ endpoint: cluster.endpoint }) from @kiln/sdk …
 * await cluster.close();
 */
export { startLocalCluster, type LocalCluster, type LocalClusterOptions } from "./cluster/local-cluster.js";
export { startControlPlane, type ControlPlane, type ControlPlaneOptions } from "./control/server.js";
export { startCacheServer, type CacheServer, type CacheServerOptions } from "./cache/server.js";
export { startAgent, type Agent, type AgentOptions } from "./agent/agent.js";
export { runCli } from "./cli/program.js";
