import { create } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import { InvalidArgumentError, bindFailureEvent, eventMessage, SessionEvent } from "@kiln/protocol";
import type { ApplicationRegistry } from "./applications.js";
import type { AgentConnection } from "./agent-connection.js";
import { AssignedTasks, ClusterState, newExecutorId, type ExecutorRecord, type NodeRecord } from "./cluster-state.js";
import type { Credentials } from "../net/credentials.js";
import type { ControlPlaneConfig } from "./config.js";
import { whyNoNodeFits } from "./fit.js";
import { NodeNameTakenError } from "./node-name-taken.js";
import { planCycle, type DemandInput, type NodeInput } from "./scheduler.js";
import type { RunningTask, SessionRecord, SessionRegistry } from "./sessions.js";
import type { GroupCommit } from "./store/group-commit.js";

const { ExecutorState, NodeState, SessionState, TaskState } = flame;
const DEFAULT_DELAY_RELEASE_S = 60;
const MAX_BIND_BACKOFF_MS = 30_000;
/** Input bytes an executor may hold beyond its first task (its window is bounded by count too). */
const EXECUTOR_INPUT_BYTES = 8 * 1024 * 1024;

/**
 * Turns the scheduler's plans into executor binds and unbinds, feeds bound
 * executors with tasks, and applies what agents report (bind results,
 * completions, lost nodes). Everything here reacts to events; a slow tick
 * only drives timers (delay-release, bind backoff, heartbeat timeouts).
 */
export class Orchestrator {
  readonly cluster = new ClusterState();
  private readonly dirtySessions = new Set<SessionRecord>();
  private dispatchScheduled = false;
  private cycleScheduled = false;
  private tick: NodeJS.Timeout | undefined;
  /** After a restart: the nodes registered before it that have not come back yet (see recover). */
  private awaited: Set<string> | undefined;
  private recoveryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly config: ControlPlaneConfig,
    private readonly sessions: SessionRegistry,
    private readonly apps: ApplicationRegistry,
    private readonly commit: GroupCommit,
    /** Mints the task credential each bind hands to the session's service process. */
    private readonly credentials: Credentials,
  ) {}

  start(): void {
    this.tick = setInterval(() => this.onTick(), this.config.scheduleIntervalMs);
    this.tick.unref();
  }

  /**
   * After a restart, holds the tasks loaded Pending back until every node
   * that was registered before (`nodes`, from the store) has reconnected, or
   * the drain timeout has passed: an agent that kept running reports the
   * tasks it still runs or has completions for, and they are adopted instead
   * of run a second time elsewhere. Then the rest are dispatched.
   */
  recover(nodes: readonly string[]): void {
    if (this.sessions.recoveredCount === 0 || nodes.length === 0) {
      this.endRecovery();
      return;
    }
    this.awaited = new Set(nodes);
    this.config.log(
      `waiting up to ${this.config.drainTimeoutMs} ms for ${nodes.length} nodes to reconnect before requeueing ${this.sessions.recoveredCount} unfinished tasks`,
    );
    this.recoveryTimer = setTimeout(() => this.endRecovery(), this.config.drainTimeoutMs);
    this.recoveryTimer.unref();
  }

  private endRecovery(): void {
    clearTimeout(this.recoveryTimer);
    const missing = [...(this.awaited ?? [])];
    this.awaited = undefined;
    for (const name of missing) if (!this.cluster.nodes.has(name)) this.commit.write((store) => store.deleteNode(name));
    const requeued = this.sessions.releaseRecovered();
    if (requeued > 0 || missing.length > 0)
      this.config.log(
        `${requeued} unfinished tasks no agent holds are queued again` +
          (missing.length > 0 ? ` (nodes that did not come back: ${missing.join(", ")})` : ""),
      );
  }

  /** After each commit: tells every agent which of its completions are now safe in the store. */
  acknowledgeCompletions(): void {
    for (const node of this.cluster.nodes.values()) node.connection?.acknowledgeCommitted();
  }

  stop(): void {
    clearInterval(this.tick);
    clearTimeout(this.recoveryTimer);
    for (const node of this.cluster.nodes.values()) {
      clearTimeout(node.drainTimer);
      node.connection?.close();
    }
  }

  // ---- events from the session registry ----

  workAdded(s: SessionRecord): void {
    this.dirtySessions.add(s);
    if (!this.dispatchScheduled) {
      this.dispatchScheduled = true;
      setImmediate(() => this.dispatchDirty());
    }
  }

  sessionEnded(s: SessionRecord): void {
    for (const e of this.cluster.executorsOf(s.id)) if (e.assigned.size === 0) this.unbind(e);
    this.requestCycle();
  }

  /** Tells agents to drop tasks that were cancelled while running. */
  cancelRunning(running: readonly RunningTask[]): void {
    const byNode = new Map<AgentConnection, kiln.TaskRef[]>();
    for (const { task: t, executorId } of running) {
      const e = this.cluster.executors.get(executorId);
      if (!e) continue;
      e.assigned.delete(t);
      const conn = e.node.connection;
      if (!conn) continue;
      let refs = byNode.get(conn);
      if (!refs) byNode.set(conn, (refs = []));
      refs.push(create(kiln.TaskRefSchema, { sessionId: t.sessionId, taskId: String(t.id), attempt: t.attempt }));
    }
    for (const [conn, tasks] of byNode) conn.send({ case: "cancel", value: create(kiln.CancelTasksSchema, { tasks }) });
    this.requestCycle();
  }

  // ---- the agent stream ----

  /**
   * Registers the agent on `conn` as node `reg.node.name`. A name whose
   * stream is still live belongs to the agent holding it: another agent
   * asking for it is refused (NodeNameTakenError) instead of evicting it, so
   * two agents given one name cannot replace each other forever. The holder's
   * stream is replaced only by the same agent process (same instance id: its
   * old stream is half-open), or once it has been silent for two heartbeat
   * intervals, so an agent restarted after a crash is not locked out until
   * the heartbeat timeout.
   */
  register(conn: AgentConnection, reg: kiln.Register): void {
    const d = reg.node;
    if (!d || !d.name) throw new InvalidArgumentError("register.node.name", "is required");
    conn.agent = { instanceId: reg.instanceId, pid: reg.pid };
    let node = this.cluster.nodes.get(d.name);
    const holder = node?.connection;
    if (holder && holder !== conn) {
      const sameAgent = reg.instanceId !== "" && holder.agent?.instanceId === reg.instanceId;
      const silentMs = Date.now() - holder.lastSeen;
      if (!sameAgent && silentMs <= 2 * this.config.heartbeatIntervalMs) {
        const refusal = new NodeNameTakenError(node!, holder, silentMs);
        this.config.log(`refused an agent (pid ${reg.pid || "unknown"}): ${refusal.message}`);
        throw refusal;
      }
      const why = sameAgent ? "the same agent reconnected" : `the old stream was silent for ${silentMs} ms`;
      holder.close(new Error(`replaced by a new connection (${why})`));
    }
    if (!node) {
      node = {
        name: d.name,
        hostname: d.hostname,
        capacity: { cpu: 0, memory: 0, gpu: 0 },
        arch: "",
        os: "",
        maxExecutors: 0,
        state: NodeState.Ready,
        lastHeartbeat: Date.now(),
        connection: undefined,
        drainTimer: undefined,
        executors: new Set(),
      };
      this.cluster.nodes.set(d.name, node);
    }
    clearTimeout(node.drainTimer);
    node.drainTimer = undefined;
    node.hostname = d.hostname || d.name;
    node.capacity = {
      cpu: Number(d.capacity?.cpu ?? 0n),
      memory: Number(d.capacity?.memory ?? 0n),
      gpu: d.capacity?.gpu ?? 0,
    };
    node.arch = d.arch;
    node.os = d.os;
    node.maxExecutors = d.maxExecutors || Math.max(1, node.capacity.cpu);
    node.state = NodeState.Ready;
    node.lastHeartbeat = Date.now();
    node.connection = conn;
    conn.nodeName = node.name;
    // Remembered across a restart of this control plane, which then waits for the node (see recover).
    const name = node.name;
    this.commit.write((store) => store.putNode(name));

    const { stop, forget } = this.reconcile(node, reg.executors);
    conn.send({
      case: "registered",
      value: create(kiln.RegisteredSchema, {
        nodeName: node.name,
        stopExecutors: stop,
        forgetTasks: forget,
        heartbeatIntervalMs: this.config.heartbeatIntervalMs,
      }),
    });
    this.config.log(`node ${node.name} registered (${node.executors.size} executors kept, ${stop.length} stopped)`);
    for (const e of node.executors) this.workAdded(this.sessions.get(e.sessionId)!);
    if (this.awaited?.delete(node.name) && this.awaited.size === 0) this.endRecovery();
    this.requestCycle();
  }

  /** Brings the control plane's view of a reconnected node in line with what the agent still runs. */
  private reconcile(node: NodeRecord, live: readonly kiln.LiveExecutor[]): { stop: string[]; forget: kiln.TaskRef[] } {
    const stop: string[] = [];
    const forget: kiln.TaskRef[] = [];
    const liveById = new Map(live.map((l) => [l.executorId, l]));
    for (const e of [...node.executors]) {
      if (!liveById.has(e.id))
        this.dropExecutor(e, `executor ${e.id} is gone after the agent on ${node.name} restarted`);
    }
    for (const l of live) {
      const known = this.cluster.executors.get(l.executorId);
      const session = this.sessions.get(l.sessionId);
      if (known && known.node === node) {
        const held = new Set(l.tasks.map((r) => `${r.sessionId}/${r.taskId}/${r.attempt}`));
        for (const t of [...known.assigned]) {
          if (!held.has(`${t.sessionId}/${t.id}/${t.attempt}`)) {
            known.assigned.delete(t);
            this.sessions.requeue(this.sessions.get(t.sessionId)!, t, `task lost by executor ${known.id}`);
          }
        }
        for (const r of l.tasks) {
          const t = session && this.sessions.liveTask(session, r.taskId);
          if (!t || !known.assigned.has(t) || t.attempt !== r.attempt) forget.push(r);
        }
        continue;
      }
      const app = session ? this.apps.get(session.application) : undefined;
      if (!session || !app || session.state !== SessionState.Open || known) {
        stop.push(l.executorId);
        forget.push(...l.tasks);
        continue;
      }
      // The control plane restarted while this executor kept running: adopt it and the tasks it still holds.
      const e = this.newExecutor(node, session, l.executorId, ExecutorState.ExecutorBound);
      for (const r of l.tasks) {
        const t = this.sessions.liveTask(session, r.taskId);
        if (t && t.state === TaskState.Pending && t.attempt === r.attempt) {
          this.sessions.adopt(session, t, e.id, node.hostname);
          e.assigned.add(t);
        } else {
          forget.push(r);
        }
      }
    }
    return { stop, forget };
  }

  heartbeat(conn: AgentConnection): void {
    conn.lastSeen = Date.now();
    const node = conn.nodeName ? this.cluster.nodes.get(conn.nodeName) : undefined;
    if (node) node.lastHeartbeat = conn.lastSeen;
  }

  /** The agent's stream ended: drain the node, and requeue its work if it does not come back in time. */
  disconnected(conn: AgentConnection, reason: string): void {
    const node = conn.nodeName ? this.cluster.nodes.get(conn.nodeName) : undefined;
    if (!node || node.connection !== conn) return;
    node.connection = undefined;
    node.state = NodeState.Unknown;
    this.config.log(`node ${node.name} disconnected (${reason}); draining for ${this.config.drainTimeoutMs} ms`);
    clearTimeout(node.drainTimer);
    node.drainTimer = setTimeout(() => this.drained(node), this.config.drainTimeoutMs);
    node.drainTimer.unref();
  }

  private drained(node: NodeRecord): void {
    node.drainTimer = undefined;
    if (node.connection) return;
    node.state = NodeState.NotReady;
    this.config.log(`node ${node.name} did not come back; requeueing its tasks`);
    this.commit.write((store) => store.deleteNode(node.name));
    for (const e of [...node.executors]) this.dropExecutor(e, `node ${node.name} lost`);
    this.requestCycle();
  }

  reports(conn: AgentConnection, reports: readonly kiln.ExecutorReport[]): void {
    for (const r of reports) {
      const e = this.cluster.executors.get(r.executorId);
      if (!e || e.node.connection !== conn) continue;
      const s = this.sessions.get(e.sessionId);
      switch (r.event) {
        case kiln.ExecutorEvent.BOUND:
          e.state = ExecutorState.ExecutorBound;
          if (s) {
            s.bindFailures = 0;
            this.workAdded(s);
          }
          break;
        case kiln.ExecutorEvent.PROCESS_EXITED:
          // The agent restarts the process; no new tasks until it reports BOUND again.
          e.state = ExecutorState.ExecutorBinding;
          if (s)
            this.sessions.addEvent(
              s,
              SessionEvent.ProcessExited,
              `executor ${e.id}: ${r.message || "its service process exited"}`,
            );
          break;
        case kiln.ExecutorEvent.BIND_FAILED:
          this.dropExecutor(e, `bind failed: ${r.message}`);
          if (s) this.bindFailed(s, r.code, r.message);
          break;
        case kiln.ExecutorEvent.UNBOUND:
          this.dropExecutor(e, r.message ? `executor unbound: ${r.message}` : "executor unbound");
          break;
        default:
          break;
      }
    }
    this.requestCycle();
  }

  private bindFailed(s: SessionRecord, code: number, detail: string): void {
    s.bindFailures++;
    const event = bindFailureEvent(code);
    const message = eventMessage(event, detail);
    this.sessions.addEvent(s, event, message);
    const backoff = Math.min(MAX_BIND_BACKOFF_MS, 500 * 2 ** (s.bindFailures - 1));
    s.nextBindAt = Date.now() + backoff;
    if (s.bindFailures >= this.config.bindRetryLimit) {
      const reason = `application "${s.application}" could not be bound ${s.bindFailures} times; last error: ${message}`;
      const failed = this.sessions.failPending(s, reason);
      this.sessions.addEvent(s, SessionEvent.BindRetryLimit, `${reason} (${failed} pending tasks failed)`);
      s.bindFailures = 0;
    }
  }

  completions(conn: AgentConnection, items: readonly kiln.Completion[]): void {
    const touched = new Set<SessionRecord>();
    for (const c of items) {
      conn.received(c.seq);
      const s = this.sessions.get(c.sessionId);
      const e = this.cluster.executors.get(c.executorId);
      const t = s && this.sessions.liveTask(s, c.taskId);
      // Fencing: only the executor holding this attempt may finish the task.
      if (!s || !e || !t || e.node.connection !== conn) continue;
      if (t.state !== TaskState.Running || t.executorId !== e.id || t.attempt !== c.attempt) continue;
      e.assigned.delete(t);
      this.sessions.finish(s, t, c.returnCode, c.output, c.message, e.node.hostname);
      touched.add(s);
    }
    for (const s of touched) this.dispatch(s);
    if (touched.size > 0) {
      this.flushAssignments();
      this.requestCycle();
    }
    // The ack goes after a commit (acknowledgeCompletions); fenced-off completions write nothing, so ask for one.
    this.commit.flushSoon();
  }

  // ---- dispatch: the hot path ----

  /**
   * Hands the pending tasks of sessions that got work to their executors and
   * sends the assignments at once. Called after each store commit, so new
   * tasks leave before the API reply that acknowledges them is written, and
   * at the end of the turn for work added without a commit.
   */
  dispatchDirty(): void {
    this.dispatchScheduled = false;
    if (this.dirtySessions.size === 0) return;
    const sessions = [...this.dirtySessions];
    this.dirtySessions.clear();
    for (const s of sessions) this.dispatch(s);
    this.flushAssignments();
    this.requestCycle();
  }

  private flushAssignments(): void {
    for (const node of this.cluster.nodes.values()) node.connection?.flush();
  }

  /** Fills the windows of a session's bound executors with its pending tasks. */
  private dispatch(s: SessionRecord): void {
    if (s.state !== SessionState.Open || s.counts.pending === 0) return;
    for (const e of this.cluster.executorsOf(s.id)) {
      const conn = e.node.connection;
      if (e.state !== ExecutorState.ExecutorBound || e.reclaim || !conn) continue;
      // Bounded by count and by bytes: a window of large inputs must not pile up towards a slow agent.
      while (e.assigned.size < e.window && (e.assigned.size === 0 || e.assigned.inputBytes < EXECUTOR_INPUT_BYTES)) {
        const t = this.sessions.nextPending(s);
        if (!t) return;
        this.sessions.start(s, t, e.id, e.node.hostname);
        e.assigned.add(t);
        e.idleSince = undefined;
        conn.assign(e.id, s.id, t.id, t.attempt, t.input);
      }
    }
  }

  // ---- scheduling ----

  /**
   * Plans a cycle once this turn's messages are on the wire. Node sends
   * HTTP/2 frames from a native immediate that runs before the next turn's
   * JS immediates but after those queued in this one, so a cycle queued
   * beside the writes would hold back the dispatches and watch updates it
   * follows; queued from the next turn it runs after they are sent.
   */
  requestCycle(): void {
    if (this.cycleScheduled) return;
    this.cycleScheduled = true;
    setImmediate(() =>
      setImmediate(() => {
        this.cycleScheduled = false;
        this.cycle();
      }),
    );
  }

  private onTick(): void {
    const now = Date.now();
    for (const node of this.cluster.nodes.values()) {
      const conn = node.connection;
      if (conn && now - conn.lastSeen > this.config.heartbeatTimeoutMs) {
        conn.close(new Error(`no heartbeat for ${this.config.heartbeatTimeoutMs} ms`));
        this.disconnected(conn, "heartbeat timeout");
      }
    }
    this.cycle();
  }

  private cycle(): void {
    const now = Date.now();
    this.releaseIdle(now);
    const demands: DemandInput[] = [];
    for (const s of this.sessions.list()) {
      const executors = this.cluster.executorsOf(s.id);
      if (s.state !== SessionState.Open && executors.size === 0) continue;
      const app = this.apps.get(s.application);
      let idle = 0;
      for (const e of executors) if (e.assigned.size === 0) idle++;
      let desired = 0;
      if (s.state === SessionState.Open && app) {
        const work = Math.ceil((s.counts.pending + s.counts.running) / app.concurrency);
        desired = Math.max(work, s.spec.minInstances);
        if (s.spec.maxInstances !== undefined) desired = Math.min(desired, s.spec.maxInstances);
        // While backing off after a bind failure, keep what it has but ask for no more.
        if (now < s.nextBindAt) desired = Math.min(desired, executors.size);
      }
      if (desired === 0 && executors.size === 0) continue;
      demands.push({
        id: s.id,
        priority: s.spec.priority,
        creationTime: s.creationTime,
        resreq: s.resreq,
        desired,
        allocated: executors.size,
        idle,
      });
    }
    if (demands.length === 0) return;
    const nodes: NodeInput[] = [];
    for (const n of this.cluster.nodes.values()) {
      if (n.state !== NodeState.Ready || !n.connection) continue;
      nodes.push({
        name: n.name,
        free: this.cluster.free(n),
        total: { ...n.capacity, slots: n.maxExecutors },
      });
    }
    for (const d of demands) if (d.desired > 0 && d.allocated === 0) this.judgeFit(this.sessions.get(d.id)!, nodes);
    const plan = planCycle(demands, nodes);
    for (const { sessionId, node } of plan.binds)
      this.bind(this.sessions.get(sessionId)!, this.cluster.nodes.get(node)!);
    for (const [sessionId, count] of plan.reclaim) this.reclaim(sessionId, count);
  }

  /**
   * Tells a session's watchers (an event) when no connected node could ever
   * hold one of its executors, and again once one could. Judged against the
   * nodes connected now, at every cycle the session waits for executors, so
   * a big enough node that joins later is seen at once. With no node at all
   * nothing is judged: an agent may still be starting.
   */
  private judgeFit(s: SessionRecord, nodes: readonly NodeInput[]): void {
    if (nodes.length === 0) return;
    const why = whyNoNodeFits(s.resreq, nodes);
    if (why !== undefined && !s.unfittable) {
      s.unfittable = true;
      this.sessions.addEvent(
        s,
        SessionEvent.Unschedulable,
        `no node can run this session: ${why}; its tasks wait until a node that fits joins`,
      );
    } else if (why === undefined && s.unfittable) {
      s.unfittable = false;
      this.sessions.addEvent(s, SessionEvent.Schedulable, "a node that fits this session has joined");
    }
  }

  private bind(s: SessionRecord, node: NodeRecord): void {
    const app = this.apps.get(s.application);
    if (!app || !node.connection) return;
    const e = this.newExecutor(node, s, newExecutorId(), ExecutorState.ExecutorBinding);
    node.connection.send({
      case: "bind",
      value: create(kiln.BindSchema, {
        executorId: e.id,
        sessionId: s.id,
        applicationName: app.name,
        application: app.spec,
        ...(s.spec.commonData !== undefined ? { commonData: s.spec.commonData } : {}),
        concurrency: app.concurrency,
        ...(this.credentials.required
          ? { taskCredential: this.credentials.mintTaskCredential({ application: app.name, sessionId: s.id }) }
          : {}),
      }),
    });
  }

  private newExecutor(node: NodeRecord, s: SessionRecord, id: string, state: flame.ExecutorState): ExecutorRecord {
    const concurrency = this.apps.get(s.application)?.concurrency ?? 1;
    const e: ExecutorRecord = {
      id,
      node,
      sessionId: s.id,
      state,
      resreq: s.resreq,
      concurrency,
      // A service that runs one task at a time gets one: a second would wait there while another executor idles.
      window: concurrency === 1 ? 1 : concurrency * 2,
      assigned: new AssignedTasks(),
      idleSince: undefined,
      reclaim: false,
    };
    this.cluster.addExecutor(e);
    return e;
  }

  private reclaim(sessionId: string, count: number): void {
    const executors = [...this.cluster.executorsOf(sessionId)];
    let marked = executors.filter((e) => e.reclaim).length;
    // Idle executors first: they can go at once.
    executors.sort((a, b) => a.assigned.size - b.assigned.size);
    for (const e of executors) {
      if (marked >= count) break;
      if (e.reclaim) continue;
      e.reclaim = true;
      marked++;
      if (e.assigned.size === 0) this.unbind(e);
    }
  }

  /** Unbinds executors with nothing to do: at once for closed sessions and reclaimed executors, after delay-release otherwise. */
  private releaseIdle(now: number): void {
    for (const e of this.cluster.executors.values()) {
      if (e.state !== ExecutorState.ExecutorBound || e.assigned.size > 0) continue;
      const s = this.sessions.get(e.sessionId);
      if (!s || s.state !== SessionState.Open || e.reclaim) {
        this.unbind(e);
        continue;
      }
      if (s.counts.pending > 0) continue;
      e.idleSince ??= now;
      if (this.cluster.executorsOf(s.id).size <= s.spec.minInstances) continue;
      const app = this.apps.get(s.application);
      const delayMs = Number(app?.spec.delayRelease ?? BigInt(DEFAULT_DELAY_RELEASE_S)) * 1000;
      if (now - e.idleSince >= delayMs) this.unbind(e);
    }
  }

  private unbind(e: ExecutorRecord): void {
    if (e.state === ExecutorState.ExecutorUnbinding) return;
    if (!e.node.connection) return;
    e.state = ExecutorState.ExecutorUnbinding;
    e.node.connection.send({ case: "unbind", value: create(kiln.UnbindSchema, { executorId: e.id }) });
  }

  /** Forgets an executor; tasks it still held go back to pending (or fail past the retry limit). */
  private dropExecutor(e: ExecutorRecord, reason: string): void {
    this.cluster.removeExecutor(e);
    const s = this.sessions.get(e.sessionId);
    if (!s) return;
    if (e.assigned.size > 0)
      this.sessions.addEvent(s, SessionEvent.ExecutorLost, `${reason} (${e.assigned.size} tasks)`);
    for (const t of e.assigned) if (t.state === TaskState.Running) this.sessions.requeue(s, t, reason);
    e.assigned.clear();
  }
}
