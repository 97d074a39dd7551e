import { create } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import { kilnVersion } from "../util/version.js";
import type { ClusterState } from "./cluster-state.js";
import type { SessionRegistry } from "./sessions.js";

/**
 * What GetClusterInfo answers (and `/healthz` shows to a caller with the
 * token): the version, the object cache clients should use, and counts of
 * what the control plane holds right now.
 *
 * @example
 * const info = clusterInfo(orchestrator.cluster, sessions, "http://127.0.0.1:7422");
 */
export function clusterInfo(
  cluster: ClusterState,
  sessions: SessionRegistry,
  cacheEndpoint: string | undefined,
): kiln.ClusterInfo {
  let readyNodes = 0;
  for (const n of cluster.nodes.values()) if (n.state === flame.NodeState.Ready && n.connection) readyNodes++;
  let openSessions = 0;
  for (const s of sessions.list()) if (s.state === flame.SessionState.Open) openSessions++;
  return create(kiln.ClusterInfoSchema, {
    version: kilnVersion(),
    cacheEndpoint: cacheEndpoint ?? "",
    nodes: cluster.nodes.size,
    readyNodes,
    executors: cluster.executors.size,
    openSessions,
  });
}
