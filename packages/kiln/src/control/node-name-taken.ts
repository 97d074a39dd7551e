import { ErrorCode, KilnError } from "@kiln/protocol";
import type { AgentConnection } from "./agent-connection.js";
import type { NodeRecord } from "./cluster-state.js";

/** An agent asked for a node name that another live agent holds; it is refused, and the holder keeps it. */
export class NodeNameTakenError extends KilnError {
  constructor(node: NodeRecord, holder: AgentConnection, silentMs: number) {
    const pid = holder.agent?.pid ? `pid ${holder.agent.pid} on ` : "";
    super(
      ErrorCode.AlreadyExists,
      `node "${node.name}" is already connected: another agent (${pid}host ${node.hostname}, connected since ` +
        `${new Date(holder.openedAt).toISOString()}, last heard from ${silentMs} ms ago) holds that name. ` +
        `Give this agent another --name, or stop the other one`,
    );
  }
}
