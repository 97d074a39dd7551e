import type { Resources } from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";
import { randomBytes } from "node:crypto";
import type { AgentConnection } from "./agent-connection.js";
import type { TaskRecord } from "./sessions.js";

export interface NodeRecord {
  name: string;
  hostname: string;
  capacity: Resources;
  arch: string;
  os: string;
  maxExecutors: number;
  state: flame.NodeState;
  /** Unix ms of the last message from the agent. */
  lastHeartbeat: number;
  connection: AgentConnection | undefined;
  drainTimer: NodeJS.Timeout | undefined;
  executors: Set<ExecutorRecord>;
}

export interface ExecutorRecord {
  id: string;
  node: NodeRecord;
  sessionId: string;
  state: flame.ExecutorState;
  resreq: Resources;
  /** Tasks the service runs at once, and how many the agent may hold (running + queued). */
  concurrency: number;
  window: number;
  assigned: AssignedTasks;
  /** Unix ms since when the executor has had no work, for delay-release. */
  idleSince: number | undefined;
  /** Marked by the scheduler to give its capacity to another session: no new tasks, unbind once empty. */
  reclaim: boolean;
}

/**
 * The tasks an executor holds (running or queued at its agent), with the bytes of their inputs: what
 * the stream to the agent and the agent's queue hold of them, bounded by the dispatcher.
 */
export class AssignedTasks extends Set<TaskRecord> {
  inputBytes = 0;

  override add(t: TaskRecord): this {
    if (!this.has(t)) this.inputBytes += t.input?.byteLength ?? 0;
    return super.add(t);
  }

  override delete(t: TaskRecord): boolean {
    if (!super.delete(t)) return false;
    this.inputBytes -= t.input?.byteLength ?? 0;
    return true;
  }

  override clear(): void {
    this.inputBytes = 0;
    super.clear();
  }
}

/** Nodes and the executors on them, indexed for the scheduler and the dispatcher. */
export class ClusterState {
  readonly nodes = new Map<string, NodeRecord>();
  readonly executors = new Map<string, ExecutorRecord>();
  private readonly bySession = new Map<string, Set<ExecutorRecord>>();

  addExecutor(e: ExecutorRecord): void {
    this.executors.set(e.id, e);
    e.node.executors.add(e);
    let set = this.bySession.get(e.sessionId);
    if (!set) this.bySession.set(e.sessionId, (set = new Set()));
    set.add(e);
  }

  removeExecutor(e: ExecutorRecord): void {
    this.executors.delete(e.id);
    e.node.executors.delete(e);
    const set = this.bySession.get(e.sessionId);
    set?.delete(e);
    if (set?.size === 0) this.bySession.delete(e.sessionId);
  }

  executorsOf(sessionId: string): ReadonlySet<ExecutorRecord> {
    return this.bySession.get(sessionId) ?? EMPTY;
  }

  /** Resources and slots of a node not held by its executors. */
  free(node: NodeRecord): Resources & { slots: number } {
    let cpu = node.capacity.cpu;
    let memory = node.capacity.memory;
    let gpu = node.capacity.gpu;
    for (const e of node.executors) {
      cpu -= e.resreq.cpu;
      memory -= e.resreq.memory;
      gpu -= e.resreq.gpu;
    }
    return { cpu, memory, gpu, slots: node.maxExecutors - node.executors.size };
  }
}

const EMPTY: ReadonlySet<ExecutorRecord> = new Set();

export function newExecutorId(): string {
  return `e-${randomBytes(5).toString("hex")}`;
}

export function toExecutorMessage(e: ExecutorRecord): flame.Executor {
  return {
    $typeName: "flame.v1.Executor",
    metadata: { $typeName: "flame.v1.Metadata", id: e.id, name: e.id },
    spec: {
      $typeName: "flame.v1.ExecutorSpec",
      node: e.node.name,
      resreq: {
        $typeName: "flame.v1.ResourceRequirement",
        cpu: BigInt(e.resreq.cpu),
        memory: BigInt(e.resreq.memory),
        gpu: e.resreq.gpu,
      },
      shim: flame.Shim.Host,
    },
    status: { $typeName: "flame.v1.ExecutorStatus", state: e.state, sessionId: e.sessionId },
  };
}

export function toNodeMessage(n: NodeRecord): flame.Node {
  const res = {
    $typeName: "flame.v1.ResourceRequirement" as const,
    cpu: BigInt(n.capacity.cpu),
    memory: BigInt(n.capacity.memory),
    gpu: n.capacity.gpu,
  };
  return {
    $typeName: "flame.v1.Node",
    metadata: { $typeName: "flame.v1.Metadata", id: n.name, name: n.name },
    spec: { $typeName: "flame.v1.NodeSpec", hostname: n.hostname },
    status: {
      $typeName: "flame.v1.NodeStatus",
      state: n.state,
      capacity: res,
      allocatable: res,
      info: { $typeName: "flame.v1.NodeInfo", arch: n.arch, os: n.os },
      addresses: [],
      lastHeartbeatTime: BigInt(Math.floor(n.lastHeartbeat / 1000)),
    },
  };
}
