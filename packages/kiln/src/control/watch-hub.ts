import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import { AsyncQueue } from "@kiln/protocol";
import { isTerminal, type SessionRecord, type TaskRecord } from "./sessions.js";
import type { StoredTask } from "./store/store.js";

/** Updates per snapshot message, so a session of any size is sent in messages of bounded size. */
const SNAPSHOT_CHUNK = 1000;

interface SessionWatcher {
  omitOutput: boolean;
  queue: AsyncQueue<kiln.WatchSessionResponse>;
  buffer: kiln.TaskUpdate[];
  /** Its snapshot is still being read: changes wait in `buffer` until it is sent. */
  snapshotting: boolean;
}

interface TaskWatcher {
  queue: AsyncQueue<flame.Task>;
  latest: StoredTask | undefined;
}

/**
 * Fans task changes out to watch streams: per session (kiln.v1 WatchSession)
 * and per task (flame.v1 WatchTask). Changes are buffered and released after
 * the store commit that holds them (`flush`), one message per watcher per
 * commit, so a watcher never sees a change a crash could undo.
 */
export class WatchHub {
  private readonly sessionWatchers = new Map<string, Set<SessionWatcher>>();
  private readonly taskWatchers = new Map<string, Set<TaskWatcher>>();
  private readonly dirty = new Set<SessionWatcher | TaskWatcher>();
  private readonly endedSessions = new Map<string, SessionRecord>();

  constructor(private readonly toMessage: (t: StoredTask) => flame.Task) {}

  /**
   * Opens a session watch. With a snapshot (the session's tasks in id order, see
   * SessionRegistry.tasksInOrder, which looks at memory before it returns its first task) the changes
   * made while it is read wait until it is sent, and those it already shows are left out.
   */
  watchSession(
    s: SessionRecord,
    options: { snapshot?: AsyncIterable<StoredTask>; omitOutput: boolean },
  ): AsyncQueue<kiln.WatchSessionResponse> {
    const w: SessionWatcher = {
      omitOutput: options.omitOutput,
      queue: new AsyncQueue(),
      buffer: [],
      snapshotting: options.snapshot !== undefined,
    };
    let set = this.sessionWatchers.get(s.id);
    if (!set) this.sessionWatchers.set(s.id, (set = new Set()));
    set.add(w);
    if (options.snapshot) void this.sendSnapshot(w, s.seq, options.snapshot);
    else w.queue.push(create(kiln.WatchSessionResponseSchema, { ready: true }));
    return w.queue;
  }

  private async sendSnapshot(w: SessionWatcher, seqAtStart: number, tasks: AsyncIterable<StoredTask>): Promise<void> {
    // Stored rows changed after the watch opened: buffered changes they already show are dropped.
    const shown = new Map<string, number>();
    let chunk: kiln.TaskUpdate[] = [];
    try {
      for await (const t of tasks) {
        if (t.seq > seqAtStart) shown.set(String(t.id), t.seq);
        chunk.push(toUpdate(t, w.omitOutput));
        if (chunk.length === SNAPSHOT_CHUNK) {
          w.queue.push(create(kiln.WatchSessionResponseSchema, { updates: chunk }));
          chunk = [];
        }
      }
    } catch (err) {
      w.queue.fail(err);
      return;
    }
    const later = w.buffer.filter((u) => u.seq > BigInt(shown.get(u.taskId) ?? -1));
    w.buffer = [];
    w.snapshotting = false;
    w.queue.push(create(kiln.WatchSessionResponseSchema, { ready: true, updates: [...chunk, ...later] }));
    this.endFinishedSessions();
  }

  unwatchSession(sessionId: string, queue: AsyncQueue<kiln.WatchSessionResponse>): void {
    const set = this.sessionWatchers.get(sessionId);
    if (!set) return;
    for (const w of set) if (w.queue === queue) set.delete(w);
    if (set.size === 0) this.sessionWatchers.delete(sessionId);
  }

  watchTask(task: StoredTask): AsyncQueue<flame.Task> {
    const w: TaskWatcher = { queue: new AsyncQueue(), latest: undefined };
    w.queue.push(this.toMessage(task));
    if (isTerminal(task.state)) {
      w.queue.end();
      return w.queue;
    }
    const key = `${task.sessionId}/${task.id}`;
    let set = this.taskWatchers.get(key);
    if (!set) this.taskWatchers.set(key, (set = new Set()));
    set.add(w);
    return w.queue;
  }

  unwatchTask(task: StoredTask, queue: AsyncQueue<flame.Task>): void {
    const key = `${task.sessionId}/${task.id}`;
    const set = this.taskWatchers.get(key);
    if (!set) return;
    for (const w of set) if (w.queue === queue) set.delete(w);
    if (set.size === 0) this.taskWatchers.delete(key);
  }

  taskChanged(s: SessionRecord, task: TaskRecord): void {
    const watchers = this.sessionWatchers.get(s.id);
    if (watchers) {
      let full: kiln.TaskUpdate | undefined;
      let slim: kiln.TaskUpdate | undefined;
      for (const w of watchers) {
        const u = w.omitOutput ? (slim ??= toUpdate(task, true)) : (full ??= toUpdate(task, false));
        w.buffer.push(u);
        this.dirty.add(w);
      }
    }
    if (this.taskWatchers.size > 0) {
      const set = this.taskWatchers.get(`${task.sessionId}/${task.id}`);
      if (set) {
        for (const w of set) {
          w.latest = task;
          this.dirty.add(w);
        }
      }
    }
  }

  /** The session closed or was deleted: its watch streams end once its running tasks are done. */
  sessionEnded(s: SessionRecord): void {
    this.endedSessions.set(s.id, s);
  }

  /** Releases buffered changes; called after each store commit. */
  flush(): void {
    for (const w of this.dirty) {
      if ("buffer" in w) {
        if (w.buffer.length === 0 || w.snapshotting) continue;
        w.queue.push(create(kiln.WatchSessionResponseSchema, { updates: w.buffer }));
        w.buffer = [];
      } else if (w.latest) {
        const t = w.latest;
        w.latest = undefined;
        w.queue.push(this.toMessage(t));
        if (isTerminal(t.state)) {
          w.queue.end();
          this.unwatchTask(t, w.queue);
        }
      }
    }
    this.dirty.clear();
    this.endFinishedSessions();
  }

  /** Ends the watch streams of sessions that ended and have no running tasks left. */
  private endFinishedSessions(): void {
    for (const [id, s] of this.endedSessions) {
      if (s.counts.running > 0) continue;
      const watchers = this.sessionWatchers.get(id) ?? [];
      // A watcher still reading its snapshot is told once it has it.
      if ([...watchers].some((w) => w.snapshotting)) continue;
      for (const w of watchers) {
        w.queue.push(create(kiln.WatchSessionResponseSchema, { sessionClosed: true }));
        w.queue.end();
      }
      this.sessionWatchers.delete(id);
      this.endedSessions.delete(id);
    }
  }
}

function toUpdate(t: StoredTask, omitOutput: boolean): kiln.TaskUpdate {
  const init: MessageInitShape<typeof kiln.TaskUpdateSchema> = {
    taskId: String(t.id),
    seq: BigInt(t.seq),
    state: t.state,
    time: BigInt(t.events[t.events.length - 1]?.time ?? t.creationTime),
  };
  if (!omitOutput && t.output) init.output = t.output;
  if (t.message !== undefined && isTerminal(t.state)) init.message = t.message;
  return create(kiln.TaskUpdateSchema, init);
}
