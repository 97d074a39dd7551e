import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  validateName,
  type Resources,
  eventMessage,
} from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";
import { randomInt } from "node:crypto";
import type { ApplicationRegistry } from "./applications.js";
import type { GroupCommit } from "./store/group-commit.js";
import type {
  SessionProgress,
  Store,
  StoredEvent,
  StoredSession,
  StoredTask,
  StoreWriter,
  WorkingSet,
} from "./store/store.js";
import { SubmissionKeys } from "./submission-keys.js";
import { TaskBacklog } from "./task-backlog.js";
import { TaskQueue } from "./task-queue.js";

const { TaskState, SessionState } = flame;

export interface TaskRecord extends StoredTask {
  /** The executor holding the task while it is Running. */
  executorId?: string;
}

export interface RunningTask {
  task: TaskRecord;
  executorId: string;
}

export interface SessionRecord {
  id: string;
  application: string;
  spec: flame.SessionSpec;
  resreq: Resources;
  state: flame.SessionState;
  creationTime: number;
  completionTime?: number;
  /**
   * The tasks in memory by id: every unfinished one, and finished ones until the commit that stores
   * them has landed. Older ones are read from the store (SessionRegistry.findTask, tasksInOrder).
   */
  live: Map<number, TaskRecord>;
  /** Pending tasks past the ones kept in memory (SessionLimits.pendingInMemory): only their ids. */
  backlog: TaskBacklog;
  /** The highest task id given out (ids are consecutive from 1). */
  taskCount: number;
  /** Sequence number of the last task change: each change gets the next (TaskRecord.seq). */
  seq: number;
  pending: TaskQueue;
  counts: { pending: number; running: number; succeed: number; failed: number; cancelled: number };
  events: StoredEvent[];
  /** Bind failures in a row, and when the scheduler may try again. */
  bindFailures: number;
  nextBindAt: number;
  /** No connected node could hold one of its executors when last judged (see fit.ts). */
  unfittable: boolean;
}

/** Who hears about task and session changes (watch streams) and new work (the dispatcher). */
export interface SessionObserver {
  taskChanged(session: SessionRecord, task: TaskRecord): void;
  /** Created, or got an event. */
  sessionChanged(session: SessionRecord): void;
  sessionEnded(session: SessionRecord): void;
  sessionDeleted(session: SessionRecord): void;
  workAdded(session: SessionRecord): void;
}

export interface SessionLimits {
  /** Pending tasks a session keeps in memory; the ones past them wait in the store (its backlog). */
  pendingInMemory: number;
  retries: number;
  maxTaskBytes: number;
  defaultResreq: Resources;
}

const ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const MAX_IDEMPOTENCY_KEY_LENGTH = 128;
// The store's copy of expired submission keys is pruned at most this often.
const KEY_PRUNE_INTERVAL_MS = 60_000;
const TERMINAL = new Set<number>([TaskState.Succeed, TaskState.Failed, TaskState.Cancelled]);

export function isTerminal(state: number): boolean {
  return TERMINAL.has(state);
}

function countKey(state: number): keyof SessionRecord["counts"] {
  switch (state) {
    case TaskState.Pending:
      return "pending";
    case TaskState.Running:
      return "running";
    case TaskState.Succeed:
      return "succeed";
    case TaskState.Failed:
      return "failed";
    default:
      return "cancelled";
  }
}

/**
 * Sessions and their tasks: the working set in memory, every change written
 * through to the store in group commits, every task change reported to the
 * observer. State transitions of tasks live here and nowhere else.
 */
export class SessionRegistry {
  private readonly sessions = new Map<string, SessionRecord>();
  /** Tasks and sessions changed this turn, written once each in the turn's commit (see persistTask). */
  private readonly dirty = new Set<TaskRecord>();
  private readonly dirtySessions = new Set<SessionRecord>();
  private readonly keys = new SubmissionKeys();
  private lastKeyPrune = 0;
  /**
   * Tasks that were Pending in the store at load: some may still run on an
   * agent that has not reconnected yet, so they are not dispatched until
   * releaseRecovered() (see Orchestrator.recover).
   */
  private recovered: TaskRecord[] = [];
  /** Backlogs are read back only once the recovered tasks are released, which go first. */
  private recoveryReleased = false;
  observer: SessionObserver | undefined;

  constructor(
    private readonly commit: GroupCommit,
    private readonly store: Store,
    private readonly apps: ApplicationRegistry,
    private readonly limits: SessionLimits,
  ) {}

  /**
   * Rebuilds memory from the store. Running tasks go back to Pending; they
   * and every other Pending task wait for releaseRecovered() before dispatch.
   */
  load(snapshot: WorkingSet): void {
    for (const { session: row, progress, events } of snapshot.sessions) {
      const spec = fromBinary(flame.SessionSpecSchema, row.spec);
      const record = this.newRecord(row.id, spec, row.state, row.creationTime, row.completionTime, events);
      record.taskCount = progress.taskCount;
      record.seq = progress.lastSeq;
      record.counts.succeed = progress.succeed;
      record.counts.failed = progress.failed;
      record.counts.cancelled = progress.cancelled;
      this.sessions.set(row.id, record);
    }
    const now = Date.now();
    for (const t of snapshot.tasks) {
      const s = this.sessions.get(t.sessionId);
      if (!s) continue;
      const task: TaskRecord = t;
      if (task.state === TaskState.Running) {
        // Stored Running: dispatched in the turn that created it (or written by an older version).
        task.state = TaskState.Pending;
        task.events.push({ code: TaskState.Pending, message: "control plane restarted; task requeued", time: now });
        task.seq = ++s.seq;
        this.persistTask(task);
      }
      // The last dispatch (Pending → Running, not stored) may have used stored attempt + 1; an agent
      // that still runs it reports that attempt, and adopt() matches it.
      if (task.state === TaskState.Pending) task.attempt++;
      s.live.set(task.id, task);
      s.counts[countKey(task.state)]++;
      if (task.state === TaskState.Pending) this.recovered.push(task);
    }
    for (const { sessionId, from, to } of snapshot.backlog) {
      const s = this.sessions.get(sessionId);
      if (!s) continue;
      s.backlog.append(from, to);
      s.backlog.storedThrough = to;
      s.counts.pending += to - from + 1;
    }
    for (const k of snapshot.submissions) if (this.sessions.has(k.sessionId)) this.keys.remember(k);
  }

  /** Tasks loaded Pending that wait for releaseRecovered(). */
  get recoveredCount(): number {
    return this.recovered.length;
  }

  /**
   * Makes the tasks loaded Pending dispatchable, ahead of newer ones; those
   * an agent reported still running were adopted meanwhile and stay with it.
   * Returns how many are queued again.
   */
  releaseRecovered(): number {
    const tasks = this.recovered.filter((t) => t.state === TaskState.Pending && this.sessions.has(t.sessionId));
    this.recovered = [];
    // pushFront stacks: push the newest first so the oldest comes out first.
    for (let i = tasks.length - 1; i >= 0; i--) this.sessions.get(tasks[i]!.sessionId)!.pending.pushFront(tasks[i]!);
    for (const s of new Set(tasks.map((t) => this.sessions.get(t.sessionId)!))) this.observer?.workAdded(s);
    this.recoveryReleased = true;
    for (const s of this.sessions.values()) if (s.backlog.size > 0) this.refill(s);
    return tasks.length;
  }

  get(id: string): SessionRecord | undefined {
    return this.sessions.get(id);
  }

  require(id: string): SessionRecord {
    const s = this.sessions.get(id);
    if (!s) throw new NotFoundError("session", id);
    return s;
  }

  list(): SessionRecord[] {
    return [...this.sessions.values()];
  }

  hasOpenSessions(app: string): boolean {
    for (const s of this.sessions.values()) if (s.application === app && s.state === SessionState.Open) return true;
    return false;
  }

  create(id: string, spec: flame.SessionSpec | undefined): SessionRecord {
    if (!spec) throw new InvalidArgumentError("session", "is required");
    if (!spec.application) throw new InvalidArgumentError("session.application", "is required");
    validateName("session.application", spec.application);
    const app = this.apps.requireAcceptingSessions(spec.application);
    const sessionId = id === "" ? `${spec.application}-${randomSuffix()}` : validateName("session_id", id);
    if (this.sessions.has(sessionId)) throw new AlreadyExistsError("session", sessionId);
    const resolved = this.resolveSpec(spec, app.spec.maxInstances);
    this.checkCommonData(resolved);
    const record = this.newRecord(sessionId, resolved, SessionState.Open, Date.now(), undefined, []);
    this.sessions.set(sessionId, record);
    this.persistSession(record);
    this.observer?.sessionChanged(record);
    return record;
  }

  /** Get-or-create: an open session with the same id must have an equal spec. */
  open(id: string, spec: flame.SessionSpec | undefined): SessionRecord {
    validateName("session_id", id);
    const existing = this.sessions.get(id);
    if (!existing) {
      if (!spec) throw new NotFoundError("session", id);
      return this.create(id, spec);
    }
    if (existing.state !== SessionState.Open) throw new FailedPreconditionError(`session "${id}" is closed`);
    if (spec) {
      const app = this.apps.get(spec.application);
      const wanted = this.resolveSpec(spec, app?.spec.maxInstances);
      const mismatch = specMismatch(existing.spec, wanted);
      if (mismatch)
        throw new InvalidArgumentError(
          `session.${mismatch}`,
          `does not match the existing open session "${id}" (open with the same spec, or another id)`,
        );
    }
    return existing;
  }

  close(id: string): SessionRecord {
    const s = this.require(id);
    if (s.state === SessionState.Closed) return s;
    s.state = SessionState.Closed;
    s.completionTime = Date.now();
    this.cancelWhere(s, (t) => t.state === TaskState.Pending, "session closed");
    this.endBacklog(s, TaskState.Cancelled, "session closed");
    s.pending.clear();
    this.persistSession(s);
    this.observer?.sessionEnded(s);
    // The last open session of an application being unregistered ends its drain.
    this.apps.settle(s.application);
    return s;
  }

  delete(id: string): SessionRecord {
    const s = this.require(id);
    if (s.counts.running > 0)
      throw new FailedPreconditionError(
        `session "${id}" has ${s.counts.running} running tasks; close it and wait for them to finish`,
      );
    if (s.state === SessionState.Open) this.close(id);
    this.sessions.delete(id);
    this.keys.forgetSession(id);
    this.commit.write((store) => store.deleteSession(id));
    this.observer?.sessionDeleted(s);
    return s;
  }

  addEvent(s: SessionRecord, code: number, message: string): void {
    const event: StoredEvent = { code, message: eventMessage(code, message), time: Date.now() };
    const seq = s.events.push(event);
    this.commit.write((store) => store.addSessionEvent(s.id, seq, event));
    this.observer?.sessionChanged(s);
  }

  /**
   * Appends tasks to an open session; returns the first new id (the rest
   * follow consecutively). With an idempotency key this session saw within
   * the retention, creates nothing and returns the first id of that batch.
   */
  createTasks(sessionId: string, inputs: readonly Uint8Array[], idempotencyKey = "", outputTo = ""): number {
    return this.addTasks(sessionId, inputs, idempotencyKey, outputTo).first;
  }

  /** Creates one task (flame.v1 CreateTask) and returns it as created. */
  createTask(sessionId: string, input: Uint8Array): StoredTask {
    return this.addTasks(sessionId, [input], "", "").created[0]!;
  }

  /** Creates tasks; `outputTo` is the watcher key their outputs go to (see WatchHub), "" for none. */
  private addTasks(
    sessionId: string,
    inputs: readonly Uint8Array[],
    idempotencyKey: string,
    outputTo: string,
  ): { first: number; created: TaskRecord[] } {
    const s = this.require(sessionId);
    const now = Date.now();
    if (idempotencyKey !== "") {
      const earlier = this.earlierSubmission(sessionId, idempotencyKey, inputs.length, now);
      if (earlier !== undefined) return { first: earlier, created: [] };
    }
    if (s.state !== SessionState.Open)
      throw new FailedPreconditionError(`session "${sessionId}" is closed; tasks can only be created in open sessions`);
    inputs.forEach((input, i) => {
      if (input.byteLength > this.limits.maxTaskBytes)
        throw new InvalidArgumentError(
          inputs.length === 1 ? "task.input" : `inputs[${i}]`,
          `is ${input.byteLength} bytes, over the limit of ${this.limits.maxTaskBytes} bytes (put large data in the object cache)`,
        );
    });
    const first = s.taskCount + 1;
    // Past the session's share of memory (or behind a backlog, to keep the order) tasks are only stored.
    const room = this.limits.pendingInMemory - (s.counts.pending - s.backlog.size);
    const kept = s.backlog.size > 0 ? 0 : Math.max(0, Math.min(inputs.length, room));
    const created: TaskRecord[] = [];
    for (let i = 0; i < inputs.length; i++) {
      const input = inputs[i]!;
      const task: TaskRecord = {
        sessionId,
        id: first + i,
        state: TaskState.Pending,
        ...(input.byteLength > 0 ? { input } : {}),
        attempt: 0,
        retries: 0,
        creationTime: now,
        seq: ++s.seq,
        events: [{ code: TaskState.Pending, message: "created", time: now }],
        ...(outputTo !== "" ? { outputTo } : {}),
      };
      if (i < kept) {
        s.live.set(task.id, task);
        s.pending.push(task);
      }
      created.push(task);
    }
    if (kept < inputs.length) {
      const last = first + inputs.length - 1;
      s.backlog.append(first + kept, last);
      // Read back only once stored: a read before the commit would not find them.
      this.commit.write(() => () => {
        s.backlog.storedThrough = Math.max(s.backlog.storedThrough, last);
        this.refillIfLow(s);
      });
    }
    s.taskCount += inputs.length;
    s.counts.pending += inputs.length;
    for (const t of created) {
      this.persistTask(t);
      this.observer?.taskChanged(s, t);
    }
    if (idempotencyKey !== "") this.rememberSubmission(sessionId, idempotencyKey, first, inputs.length, now);
    this.observer?.workAdded(s);
    return { first, created };
  }

  /** The first task id of an earlier batch with this key, after checking the resend matches it. */
  private earlierSubmission(sessionId: string, key: string, count: number, now: number): number | undefined {
    if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH)
      throw new InvalidArgumentError(
        "idempotency_key",
        `is ${key.length} characters, over the limit of ${MAX_IDEMPOTENCY_KEY_LENGTH}`,
      );
    const earlier = this.keys.find(sessionId, key, now);
    if (!earlier) return undefined;
    if (earlier.count !== count)
      throw new InvalidArgumentError(
        "idempotency_key",
        `was used in session "${sessionId}" for a batch of ${earlier.count} tasks; a resend must have the same inputs (this one has ${count})`,
      );
    return earlier.firstTaskId;
  }

  /** Remembers a key in memory and, in the same commit as its tasks, in the store. */
  private rememberSubmission(sessionId: string, key: string, firstTaskId: number, count: number, now: number): void {
    const submission = { sessionId, key, firstTaskId, count, time: now };
    this.keys.remember(submission);
    this.commit.write((store) => store.putSubmission(submission));
    if (now - this.lastKeyPrune >= KEY_PRUNE_INTERVAL_MS) {
      this.lastKeyPrune = now;
      const cutoff = this.keys.expire(now);
      this.commit.write((store) => store.deleteSubmissionsBefore(cutoff));
    }
  }

  /** A task in memory (unfinished, or finished and not yet stored), or undefined. */
  liveTask(s: SessionRecord, taskId: string): TaskRecord | undefined {
    return s.live.get(Number(taskId));
  }

  /** A task wherever it is: in memory, or read from the store once finished. */
  async findTask(sessionId: string, taskId: string): Promise<StoredTask> {
    const s = this.require(sessionId);
    const id = this.requireTaskId(s, taskId);
    const task = s.live.get(id) ?? (await this.store.getTask(sessionId, id));
    // Deleted while it was read.
    if (!task) throw new NotFoundError("task", `${sessionId}/${taskId}`);
    return task;
  }

  /**
   * A session's tasks in id order, `pageSize` at a time, from the store merged with memory: a task in
   * memory is newer than its stored row. Memory is looked at first, so a task finished and let go of
   * while a page is read is in the store by then.
   */
  async *tasksInOrder(
    s: SessionRecord,
    options: { afterId?: number; limit?: number; changedAfter?: number; pageSize?: number } = {},
  ): AsyncGenerator<StoredTask> {
    const changedAfter = options.changedAfter;
    const live = [...s.live.values()]
      .filter((t) => changedAfter === undefined || t.seq > changedAfter)
      .sort((a, b) => a.id - b.id);
    const pageSize = options.pageSize ?? 1000;
    let remaining = options.limit ?? Infinity;
    let afterId = options.afterId ?? 0;
    let i = 0;
    while (i < live.length && live[i]!.id <= afterId) i++;
    for (;;) {
      const asked = Math.min(pageSize, remaining);
      const rows = await this.store.listTasks(s.id, {
        afterId,
        limit: asked,
        ...(changedAfter !== undefined ? { changedAfter } : {}),
      });
      for (const row of rows) {
        for (; i < live.length && live[i]!.id < row.id; i++) {
          if (remaining-- <= 0) return;
          yield live[i]!;
        }
        if (remaining-- <= 0) return;
        yield i < live.length && live[i]!.id === row.id ? live[i++]! : row;
        afterId = row.id;
      }
      if (rows.length < asked || remaining <= 0) break;
    }
    // Tasks in memory past the last stored row (the newest, not stored yet).
    for (; i < live.length && remaining-- > 0; i++) yield live[i]!;
  }

  private requireTaskId(s: SessionRecord, taskId: string): number {
    const id = /^\d+$/.test(taskId) ? Number(taskId) : 0;
    if (id < 1 || id > s.taskCount) throw new NotFoundError("task", `${s.id}/${taskId}`);
    return id;
  }

  /** The next pending task of a session, or undefined. */
  nextPending(s: SessionRecord): TaskRecord | undefined {
    const t = takePending(s);
    this.refillIfLow(s);
    return t;
  }

  /** Reads the next backlog tasks back once fewer than half the session's share are left in memory. */
  private refillIfLow(s: SessionRecord): void {
    if (s.backlog.size > 0 && s.counts.pending - s.backlog.size < this.limits.pendingInMemory / 2) this.refill(s);
  }

  /**
   * Reads back the first stored tasks of a session's backlog into memory, in id order, up to its share.
   * A task that changed while it was read (cancelled) left the backlog then, and is dropped here.
   */
  private refill(s: SessionRecord): void {
    const from = s.backlog.first();
    if (s.backlog.reading || !this.recoveryReleased || from === undefined || from > s.backlog.storedThrough) return;
    s.backlog.reading = true;
    const room = this.limits.pendingInMemory - (s.counts.pending - s.backlog.size);
    const read = this.store.listTasks(s.id, {
      afterId: from - 1,
      throughId: s.backlog.storedThrough,
      limit: Math.max(1, room),
      unfinishedOnly: true,
    });
    read.then(
      (rows) => {
        s.backlog.reading = false;
        if (this.sessions.get(s.id) !== s) return;
        let added = 0;
        for (const row of rows) {
          if (!s.backlog.delete(row.id)) continue;
          const task: TaskRecord = row;
          // Stored Running by an earlier control plane (see load); like any task stored Pending it may
          // have been dispatched with stored attempt + 1.
          task.state = TaskState.Pending;
          task.attempt++;
          s.live.set(task.id, task);
          s.pending.push(task);
          added++;
        }
        if (added > 0) this.observer?.workAdded(s);
        if (rows.length > 0) this.refillIfLow(s);
      },
      () => {
        // The store failed a read: the next dispatch tries again (a failing store stops the control plane anyway).
        s.backlog.reading = false;
      },
    );
  }

  /**
   * Ends every task of a session's backlog in the store (a close, a cancel, a bind that cannot succeed),
   * without reading them: watchers get each one's change as for any other task.
   */
  private endBacklog(s: SessionRecord, state: flame.TaskState, reason: string): number {
    const spans = s.backlog.drain();
    if (spans.length === 0) return 0;
    const time = Date.now();
    const message = eventMessage(state, reason);
    const end = { state, message, time };
    let n = 0;
    for (const { from, to } of spans) {
      const firstSeq = s.seq + 1;
      s.seq += to - from + 1;
      this.commit.write((store) => store.endUnfinishedTasks(s.id, from, to, end, firstSeq));
      for (let id = from; id <= to; id++) this.reportEnded(s, id, end, firstSeq + id - from);
      n += to - from + 1;
    }
    s.counts.pending -= n;
    s.counts[countKey(state)] += n;
    this.progressed(s);
    return n;
  }

  /** Ends one backlog task in the store and tells watchers. */
  private endBacklogTask(s: SessionRecord, id: number, state: flame.TaskState, reason: string): void {
    const end = { state, message: eventMessage(state, reason), time: Date.now() };
    const seq = ++s.seq;
    this.commit.write((store) => store.endUnfinishedTasks(s.id, id, id, end, seq));
    this.reportEnded(s, id, end, seq);
    s.counts.pending--;
    s.counts[countKey(state)]++;
    this.progressed(s);
  }

  /** What watchers hear of a backlog task that ended in the store: its id, state, message and time. */
  private reportEnded(
    s: SessionRecord,
    id: number,
    end: { state: number; message: string; time: number },
    seq: number,
  ) {
    this.observer?.taskChanged(s, {
      sessionId: s.id,
      id,
      state: end.state,
      message: end.message,
      attempt: 0,
      retries: 0,
      creationTime: end.time,
      completionTime: end.time,
      seq,
      events: [{ code: end.state, message: end.message, time: end.time }],
    });
  }

  /**
   * Pending → Running on an executor. Increments the attempt (the fencing token).
   * Not written to the store: after a restart a running task is pending again
   * anyway, so the row (with this event) is written at its next change, saving
   * a third of the per-task writes. load() accounts for the unwritten attempt.
   */
  start(s: SessionRecord, task: TaskRecord, executorId: string, host: string): void {
    this.move(s, task, TaskState.Running, `running on ${host} (executor ${executorId})`);
    task.attempt++;
    task.executorId = executorId;
    this.observer?.taskChanged(s, task);
  }

  /** Running → Succeed (return code 0) or Failed. */
  finish(
    s: SessionRecord,
    task: TaskRecord,
    returnCode: number,
    output: Uint8Array | undefined,
    message: string | undefined,
    host: string,
  ): void {
    const ok = returnCode === 0;
    this.move(
      s,
      task,
      ok ? TaskState.Succeed : TaskState.Failed,
      ok ? `completed on ${host}` : message || `failed with return code ${returnCode}`,
    );
    task.completionTime = Date.now();
    delete task.executorId;
    if (output && output.byteLength > 0) task.output = output;
    if (!ok) task.message = message || `return code ${returnCode}`;
    this.persistTask(task);
    this.observer?.taskChanged(s, task);
  }

  /** Running → Pending after its executor was lost; Failed once it has been requeued `retries` times. */
  requeue(s: SessionRecord, task: TaskRecord, reason: string): void {
    delete task.executorId;
    if (task.retries >= this.limits.retries) {
      this.move(s, task, TaskState.Failed, `${reason}; gave up after ${task.retries} retries`);
      task.completionTime = Date.now();
      task.message = `${reason} (retried ${task.retries} times)`;
    } else {
      task.retries++;
      this.move(s, task, TaskState.Pending, `${reason}; requeued (retry ${task.retries} of ${this.limits.retries})`);
      s.pending.pushFront(task);
    }
    this.persistTask(task);
    this.observer?.taskChanged(s, task);
    if (task.state === TaskState.Pending) this.observer?.workAdded(s);
  }

  /** Marks a Pending task Running again on the executor that still holds it (after a control-plane restart). */
  adopt(s: SessionRecord, task: TaskRecord, executorId: string, host: string): void {
    this.move(s, task, TaskState.Running, `still running on ${host} (executor ${executorId}) after restart`);
    task.executorId = executorId;
    this.observer?.taskChanged(s, task);
  }

  /** Cancels non-terminal tasks (all, or the given ids). Returns the tasks that were Running (their executors should drop them). */
  cancel(sessionId: string, taskIds: readonly string[]): { cancelled: number; wereRunning: RunningTask[] } {
    const s = this.require(sessionId);
    const wanted = taskIds.length > 0 ? new Set(taskIds.map((id) => this.requireTaskId(s, id))) : undefined;
    const wereRunning: RunningTask[] = [];
    const reason = "cancelled by request";
    let cancelled = this.cancelWhere(
      s,
      (t) => !isTerminal(t.state) && (!wanted || wanted.has(t.id)),
      reason,
      wereRunning,
    );
    if (!wanted) cancelled += this.endBacklog(s, TaskState.Cancelled, reason);
    else
      for (const id of wanted)
        if (s.backlog.delete(id)) {
          this.endBacklogTask(s, id, TaskState.Cancelled, reason);
          cancelled++;
        }
    return { cancelled, wereRunning };
  }

  /** Fails every pending task of a session with a reason (e.g. the application cannot be bound). */
  failPending(s: SessionRecord, reason: string): number {
    let n = 0;
    for (let t = takePending(s); t; t = takePending(s)) {
      this.end(s, t, TaskState.Failed, reason);
      n++;
    }
    return n + this.endBacklog(s, TaskState.Failed, reason);
  }

  private cancelWhere(
    s: SessionRecord,
    match: (t: TaskRecord) => boolean,
    reason: string,
    wereRunning?: RunningTask[],
  ): number {
    let n = 0;
    for (const t of s.live.values()) {
      if (!match(t)) continue;
      if (t.state === TaskState.Running && t.executorId) wereRunning?.push({ task: t, executorId: t.executorId });
      delete t.executorId;
      this.end(s, t, TaskState.Cancelled, reason);
      n++;
    }
    return n;
  }

  /** Moves a task to a terminal state with `reason` as its message, and records it. */
  private end(s: SessionRecord, t: TaskRecord, to: flame.TaskState, reason: string): void {
    this.move(s, t, to, reason);
    t.completionTime = Date.now();
    t.message = reason;
    this.persistTask(t);
    this.observer?.taskChanged(s, t);
  }

  private move(s: SessionRecord, task: TaskRecord, to: flame.TaskState, message: string): void {
    s.counts[countKey(task.state)]--;
    s.counts[countKey(to)]++;
    task.state = to;
    task.events.push({ code: to, message: eventMessage(to, message), time: Date.now() });
    task.seq = ++s.seq;
    this.progressed(s);
  }

  private resolveSpec(spec: flame.SessionSpec, appMax: number | undefined): flame.SessionSpec {
    const maxInstances = spec.maxInstances ?? appMax;
    if (maxInstances !== undefined && spec.minInstances > maxInstances)
      throw new InvalidArgumentError(
        "session.min_instances",
        `${spec.minInstances} must not exceed max_instances ${maxInstances}`,
      );
    // A resource the request leaves unset takes the default; one set to 0 stays 0.
    const d = this.limits.defaultResreq;
    const r = spec.resreq;
    const resreq = {
      cpu: r?.cpu ?? BigInt(d.cpu),
      memory: r?.memory ?? BigInt(d.memory),
      gpu: r?.gpu ?? d.gpu,
    };
    if (resreq.cpu === 0n && resreq.memory === 0n && resreq.gpu === 0) {
      throw new InvalidArgumentError("session.resreq", "must request some cpu, memory or gpu (or be omitted)");
    }
    if (resreq.gpu < 0) throw new InvalidArgumentError("session.resreq.gpu", "must not be negative");
    return create(flame.SessionSpecSchema, {
      application: spec.application,
      ...(spec.commonData !== undefined ? { commonData: spec.commonData } : {}),
      minInstances: spec.minInstances,
      ...(maxInstances !== undefined ? { maxInstances } : {}),
      batchSize: 1,
      priority: spec.priority,
      resreq,
    });
  }

  private checkCommonData(spec: flame.SessionSpec): void {
    const size = spec.commonData?.byteLength ?? 0;
    if (size > this.limits.maxTaskBytes)
      throw new InvalidArgumentError(
        "session.common_data",
        `is ${size} bytes, over the limit of ${this.limits.maxTaskBytes} bytes`,
      );
  }

  private newRecord(
    id: string,
    spec: flame.SessionSpec,
    state: flame.SessionState,
    creationTime: number,
    completionTime: number | undefined,
    events: StoredEvent[],
  ): SessionRecord {
    return {
      id,
      application: spec.application,
      spec,
      resreq: resourcesOf(spec),
      state,
      creationTime,
      ...(completionTime !== undefined ? { completionTime } : {}),
      live: new Map(),
      backlog: new TaskBacklog(),
      taskCount: 0,
      seq: 0,
      pending: new TaskQueue(),
      counts: { pending: 0, running: 0, succeed: 0, failed: 0, cancelled: 0 },
      events,
      bindFailures: 0,
      nextBindAt: 0,
      unfittable: false,
    };
  }

  private persistSession(s: SessionRecord): void {
    const row: StoredSession = {
      id: s.id,
      application: s.application,
      spec: toBinary(flame.SessionSpecSchema, s.spec),
      state: s.state,
      creationTime: s.creationTime,
      ...(s.completionTime !== undefined ? { completionTime: s.completionTime } : {}),
    };
    this.commit.write((store) => store.putSession(row));
  }

  /**
   * Marks a task for writing. A task changed several times in one turn
   * (created, started and finished) is written once, as an upsert, in the
   * turn's commit; once that commit has landed, a finished task leaves memory.
   */
  private persistTask(t: TaskRecord): void {
    this.progressed(this.sessions.get(t.sessionId)!);
    this.dirty.add(t);
  }

  /**
   * Marks a session's counts and change number for writing. Every change a watcher can see is numbered,
   * a dispatch (not stored) too, so the session's number is stored in the commit whose hooks show the
   * change: after a restart numbering goes on past anything a watcher saw.
   */
  private progressed(s: SessionRecord): void {
    if (this.dirty.size === 0 && this.dirtySessions.size === 0) this.commit.write((store) => this.writeDirty(store));
    this.dirtySessions.add(s);
  }

  private writeDirty(store: StoreWriter): () => void {
    const finished: TaskRecord[] = [];
    for (const task of this.dirty) {
      if (!this.sessions.has(task.sessionId)) continue;
      store.upsertTask(task);
      if (isTerminal(task.state)) finished.push(task);
    }
    for (const s of this.dirtySessions)
      if (this.sessions.get(s.id) === s) store.putSessionProgress(s.id, progressOf(s));
    this.dirty.clear();
    this.dirtySessions.clear();
    return () => {
      for (const task of finished) {
        const s = this.sessions.get(task.sessionId);
        if (s?.live.get(task.id) === task) s.live.delete(task.id);
      }
    };
  }
}

function progressOf(s: SessionRecord): SessionProgress {
  const { succeed, failed, cancelled } = s.counts;
  return { taskCount: s.taskCount, succeed, failed, cancelled, lastSeq: s.seq };
}

/** The next task of the session's queue that is still Pending (others were cancelled or adopted meanwhile). */
function takePending(s: SessionRecord): TaskRecord | undefined {
  return s.pending.shift((t) => t.state === TaskState.Pending);
}

function randomSuffix(): string {
  let out = "";
  for (let i = 0; i < 6; i++) out += ID_CHARS[randomInt(ID_CHARS.length)];
  return out;
}

function specMismatch(a: flame.SessionSpec, b: flame.SessionSpec): string | undefined {
  if (a.application !== b.application) return "application";
  if (a.minInstances !== b.minInstances) return "min_instances";
  if (a.maxInstances !== b.maxInstances) return "max_instances";
  if (a.priority !== b.priority) return "priority";
  const ra = resourcesOf(a);
  const rb = resourcesOf(b);
  if (ra.cpu !== rb.cpu || ra.memory !== rb.memory || ra.gpu !== rb.gpu) return "resreq";
  return undefined;
}

/**
 * A resolved spec's resources. Every field is set once resolved; one missing was
 * stored as 0 before requests had presence (proto3 leaves zeros off the wire).
 */
function resourcesOf(spec: flame.SessionSpec): Resources {
  const r = spec.resreq;
  return { cpu: Number(r?.cpu ?? 0n), memory: Number(r?.memory ?? 0n), gpu: r?.gpu ?? 0 };
}
