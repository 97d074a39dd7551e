import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import { AsyncQueue, ErrorCode, InvalidArgumentError, KilnError } from "@kiln/protocol";
import { isTerminal, type SessionRecord, type TaskRecord } from "./sessions.js";
import type { StoredTask } from "./store/store.js";

/** Updates per catch-up message, and bytes, so a session of any size is sent in messages of bounded size. */
const CHUNK_UPDATES = 1000;
const CHUNK_BYTES = 1024 * 1024;
/** What an update costs beyond its output and message: ids, state, numbers, framing. */
const UPDATE_OVERHEAD_BYTES = 48;

/** Longest watcher key (WatchSessionRequest.outputs_for, CreateTasksRequest.output_to). */
export const MAX_WATCHER_KEY_LENGTH = 128;

/** Refuses a watcher key longer than {@link MAX_WATCHER_KEY_LENGTH}, naming `field`. */
export function checkWatcherKey(field: string, key: string): void {
  if (key.length > MAX_WATCHER_KEY_LENGTH)
    throw new InvalidArgumentError(field, `is ${key.length} characters, over the limit of ${MAX_WATCHER_KEY_LENGTH}`);
}

/** What a session watcher may hold for a client that does not read fast enough. */
export interface WatchBounds {
  /** Bytes held unsent (queued messages plus changes waiting for the next commit). */
  maxBytes: number;
  /** How long a watcher may stay behind before its stream is ended. */
  behindLimitMs: number;
}

export interface WatchStats {
  sessionWatchers: number;
  behind: number;
  heldBytes: number;
}

/** A session's tasks in id order (SessionRegistry.tasksInOrder): all, or those changed after a sequence number. */
export type SessionReader = (changedAfter: number | undefined) => AsyncIterable<StoredTask>;

export interface SessionWatchOptions {
  /** Where the stream starts: a snapshot, only what changed after a sequence number, or live changes only. */
  begin: "snapshot" | "live" | { afterSeq: number };
  read: SessionReader;
  omitOutput: boolean;
  /** Outputs only of tasks created with this key (TaskRecord.outputTo); "" for every task's. */
  outputsFor: string;
}

interface SessionWatcher {
  session: SessionRecord;
  options: SessionWatchOptions;
  queue: AsyncQueue<kiln.WatchSessionResponse>;
  /** Bytes of the queued messages the stream has not taken yet. */
  heldBytes: number;
  /** Changes waiting for the next commit (or, while catching up, for the catch-up to be sent). */
  buffer: kiln.TaskUpdate[];
  bufferBytes: number;
  /** The client has every change up to this sequence number, counting messages the stream has taken. */
  sentSeq: number;
  /** A catch-up (snapshot, resume, resynchronisation) is being read from the store. */
  catchingUp: boolean;
  /** Changes made during the catch-up did not fit `buffer`: the catch-up reads again from where it began. */
  bufferLost: boolean;
  /** Set while the watcher is behind: what it held was dropped, and it is resynchronised from `sentSeq`. */
  behind: { since: number; timer: NodeJS.Timeout } | undefined;
  /** Wakes a catch-up waiting for the queue to have room. */
  room: (() => void) | undefined;
}

interface TaskWatcher {
  queue: AsyncQueue<flame.Task>;
  latest: StoredTask | undefined;
}

/** What the hub knows of a queued message: its bytes, and the sequence number the client has once it is sent. */
interface Sent {
  bytes: number;
  seq: number | undefined;
}

/**
 * Fans task changes out to watch streams: per session (kiln.v1 WatchSession)
 * and per task (flame.v1 WatchTask). Changes are buffered and released after
 * the store commit that holds them (`flush`), one message per watcher per
 * commit, so a watcher never sees a change a crash could undo.
 *
 * A session watcher holds at most `bounds.maxBytes` (and one message beyond,
 * the one the stream sends next): past it everything it holds is dropped, and
 * when its stream asks for more it is resynchronised from the store with every
 * task changed after the last update it took. A flame.v1 task watcher holds at
 * most one message per change of its one task, so needs no bound.
 */
export class WatchHub {
  private readonly sessionWatchers = new Map<string, Set<SessionWatcher>>();
  private readonly taskWatchers = new Map<string, Set<TaskWatcher>>();
  private readonly dirty = new Set<SessionWatcher | TaskWatcher>();
  private readonly endedSessions = new Map<string, SessionRecord>();
  private readonly sent = new WeakMap<kiln.WatchSessionResponse, Sent>();

  constructor(
    private readonly toMessage: (t: StoredTask) => flame.Task,
    private readonly bounds: WatchBounds,
  ) {}

  /**
   * Opens a session watch. While a snapshot or a resume is read (SessionRegistry.tasksInOrder, which
   * looks at memory before it returns its first task) the changes made meanwhile wait until it is
   * sent, and those it already shows are left out.
   */
  watchSession(s: SessionRecord, options: SessionWatchOptions): AsyncQueue<kiln.WatchSessionResponse> {
    const w: SessionWatcher = {
      session: s,
      options,
      queue: new AsyncQueue({ taken: (m) => this.taken(w, m), starved: () => this.starved(w) }),
      heldBytes: 0,
      buffer: [],
      bufferBytes: 0,
      sentSeq: s.seq,
      catchingUp: false,
      bufferLost: false,
      behind: undefined,
      room: undefined,
    };
    let set = this.sessionWatchers.get(s.id);
    if (!set) this.sessionWatchers.set(s.id, (set = new Set()));
    set.add(w);
    const { begin } = options;
    if (begin === "live") this.push(w, create(kiln.WatchSessionResponseSchema, { ready: true }), 0, s.seq);
    else void this.catchUp(w, begin === "snapshot" ? undefined : begin.afterSeq, true);
    return w.queue;
  }

  /** The session watchers, how many of them are behind, and the bytes they hold unsent (tests, diagnostics). */
  stats(): WatchStats {
    const stats: WatchStats = { sessionWatchers: 0, behind: 0, heldBytes: 0 };
    for (const set of this.sessionWatchers.values())
      for (const w of set) {
        stats.sessionWatchers++;
        if (w.behind) stats.behind++;
        stats.heldBytes += w.heldBytes + w.bufferBytes;
      }
    return stats;
  }

  private taken(w: SessionWatcher, m: kiln.WatchSessionResponse): void {
    const sent = this.sent.get(m);
    if (!sent) return;
    w.heldBytes -= sent.bytes;
    if (sent.seq !== undefined) w.sentSeq = sent.seq;
    if (w.room && w.heldBytes <= this.bounds.maxBytes / 2) {
      const wake = w.room;
      w.room = undefined;
      wake();
    }
  }

  /** The stream wants the next message: a watcher that fell behind is resynchronised now. */
  private starved(w: SessionWatcher): void {
    if (w.behind && !w.catchingUp) void this.catchUp(w, w.sentSeq, false);
  }

  private push(w: SessionWatcher, m: kiln.WatchSessionResponse, bytes: number, seq: number | undefined): void {
    this.sent.set(m, { bytes, seq });
    if (seq !== undefined) m.throughSeq = BigInt(seq);
    w.heldBytes += bytes;
    w.queue.push(m);
  }

  /** Waits until the queue has room for `bytes` more (or is empty, or the watch is gone). */
  private async room(w: SessionWatcher, bytes: number): Promise<void> {
    while (!w.queue.closed && w.heldBytes > 0 && w.heldBytes + bytes > this.bounds.maxBytes)
      await new Promise<void>((resolve) => (w.room = resolve));
  }

  /**
   * Sends every task of the session, or those changed after `changedAfter`, latest state each, then
   * the changes made meanwhile that the read did not already show. `ready` marks its last message
   * (a snapshot or a resume); a resynchronisation has none.
   */
  private async catchUp(w: SessionWatcher, changedAfter: number | undefined, ready: boolean): Promise<void> {
    w.catchingUp = true;
    for (;;) {
      // Synchronously with the first read, so every change after `seqAtStart` is buffered.
      const seqAtStart = w.session.seq;
      w.buffer = [];
      w.bufferBytes = 0;
      w.bufferLost = false;
      const shown = new Map<string, number>();
      let chunk: kiln.TaskUpdate[] = [];
      let chunkBytes = 0;
      try {
        for await (const t of w.options.read(changedAfter)) {
          if (t.seq > seqAtStart) shown.set(String(t.id), t.seq);
          const u = this.updateFor(w, t);
          chunk.push(u);
          chunkBytes += updateBytes(u);
          if (chunk.length === CHUNK_UPDATES || chunkBytes >= CHUNK_BYTES) {
            await this.room(w, chunkBytes);
            if (w.queue.closed) return;
            this.push(w, create(kiln.WatchSessionResponseSchema, { updates: chunk }), chunkBytes, undefined);
            chunk = [];
            chunkBytes = 0;
          }
        }
        await this.room(w, chunkBytes + w.bufferBytes);
      } catch (err) {
        w.queue.fail(err);
        this.removeSessionWatcher(w);
        return;
      }
      if (w.queue.closed) return;
      if (w.bufferLost) {
        // What changed while this was read did not fit: read it again, from where this read began.
        if (chunk.length > 0)
          this.push(w, create(kiln.WatchSessionResponseSchema, { updates: chunk }), chunkBytes, undefined);
        changedAfter = seqAtStart;
        continue;
      }
      const later = w.buffer.filter((u) => u.seq > BigInt(shown.get(u.taskId) ?? -1));
      const lastSeq = Math.max(seqAtStart, Number(w.buffer[w.buffer.length - 1]?.seq ?? 0));
      const bytes = chunkBytes + later.reduce((sum, u) => sum + updateBytes(u), 0);
      w.buffer = [];
      w.bufferBytes = 0;
      w.catchingUp = false;
      if (w.behind) clearTimeout(w.behind.timer);
      w.behind = undefined;
      this.push(w, create(kiln.WatchSessionResponseSchema, { ready, updates: [...chunk, ...later] }), bytes, lastSeq);
      this.endFinishedSessions();
      return;
    }
  }

  /** Drops everything the watcher holds; it is resynchronised from the store when its stream reads again. */
  private fallBehind(w: SessionWatcher): void {
    w.queue.clear();
    w.heldBytes = 0;
    w.buffer = [];
    w.bufferBytes = 0;
    const timer = setTimeout(() => this.endBehind(w), this.bounds.behindLimitMs);
    timer.unref();
    w.behind = { since: Date.now(), timer };
  }

  private endBehind(w: SessionWatcher): void {
    if (!w.behind) return;
    w.queue.clear();
    w.queue.fail(
      new KilnError(
        ErrorCode.ResourceExhausted,
        `watcher fell behind: it did not read the changes of session "${w.session.id}" for ` +
          `${Date.now() - w.behind.since} ms; reconnect with after_seq ${w.sentSeq} to resume`,
      ),
    );
    this.removeSessionWatcher(w);
  }

  private updateFor(w: SessionWatcher, t: StoredTask): kiln.TaskUpdate {
    return toUpdate(t, !this.sendsOutput(w, t));
  }

  private sendsOutput(w: SessionWatcher, t: StoredTask): boolean {
    const { omitOutput, outputsFor } = w.options;
    return !omitOutput && (outputsFor === "" || t.outputTo === outputsFor);
  }

  private removeSessionWatcher(w: SessionWatcher): void {
    const set = this.sessionWatchers.get(w.session.id);
    set?.delete(w);
    if (set?.size === 0) this.sessionWatchers.delete(w.session.id);
    this.dirty.delete(w);
    if (w.behind) clearTimeout(w.behind.timer);
    w.behind = undefined;
    w.room?.();
    w.room = undefined;
  }

  unwatchSession(sessionId: string, queue: AsyncQueue<kiln.WatchSessionResponse>): void {
    for (const w of this.sessionWatchers.get(sessionId) ?? []) if (w.queue === queue) this.removeSessionWatcher(w);
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
        // Behind: nothing is kept, its resynchronisation reads the store.
        if ((w.behind && !w.catchingUp) || w.bufferLost) continue;
        const u = this.sendsOutput(w, task) ? (full ??= toUpdate(task, false)) : (slim ??= toUpdate(task, true));
        w.buffer.push(u);
        w.bufferBytes += updateBytes(u);
        this.dirty.add(w);
        if (w.heldBytes + w.bufferBytes <= this.bounds.maxBytes) continue;
        if (w.catchingUp) {
          w.buffer = [];
          w.bufferBytes = 0;
          w.bufferLost = true;
        } else if (w.queue.size > 0) {
          // The buffer would be a second message waiting behind unsent ones.
          this.fallBehind(w);
        }
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
        if (w.buffer.length === 0 || w.catchingUp || w.behind) continue;
        const seq = Number(w.buffer[w.buffer.length - 1]!.seq);
        this.push(w, create(kiln.WatchSessionResponseSchema, { updates: w.buffer }), w.bufferBytes, seq);
        w.buffer = [];
        w.bufferBytes = 0;
        if (w.heldBytes > this.bounds.maxBytes && w.queue.size > 1) this.fallBehind(w);
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
      // A watcher still catching up (or behind, waiting to) is told once it has caught up.
      if ([...watchers].some((w) => w.catchingUp || w.behind)) continue;
      for (const w of watchers) {
        w.queue.push(create(kiln.WatchSessionResponseSchema, { sessionClosed: true }));
        w.queue.end();
        this.removeSessionWatcher(w);
      }
      this.sessionWatchers.delete(id);
      this.endedSessions.delete(id);
    }
  }
}

function updateBytes(u: kiln.TaskUpdate): number {
  return UPDATE_OVERHEAD_BYTES + (u.output?.byteLength ?? 0) + (u.message?.length ?? 0);
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
