import { create } from "@bufbuild/protobuf";
import { AsyncQueue } from "@kiln/protocol";
import { flame, kiln } from "@kiln/protocol/proto";
import { toSessionMessage } from "./api/messages.js";
import type { SessionRecord } from "./sessions.js";

export interface SessionsFeedOptions {
  /** Only these sessions; undefined: every session, including ones created later. */
  ids: ReadonlySet<string> | undefined;
  /** Send each session's new events with it. */
  events: boolean;
  /** Send a session only when it is created, closed, deleted or gets an event. */
  omitTaskChanges: boolean;
}

interface FeedWatcher extends SessionsFeedOptions {
  queue: AsyncQueue<kiln.WatchSessionsResponse>;
  changed: Set<SessionRecord>;
  deleted: string[];
  /** Per session id, how many of its events this watcher has been sent. */
  eventsSent: Map<string, number>;
  /** The last message pushed; while it waits in the queue, later changes are merged into it. */
  last: kiln.WatchSessionsResponse | undefined;
}

/**
 * Fans session changes (created, task counts, state, events, deleted) out to
 * kiln.v1 WatchSessions streams. Like the WatchHub it releases changes after
 * the store commit that holds them, one message per watcher per commit; a
 * watcher that reads slower than that gets its changes merged into the
 * message still waiting for it, so what it holds stays one entry per session.
 */
export class SessionsFeed {
  private readonly watchers = new Set<FeedWatcher>();
  private readonly dirty = new Set<FeedWatcher>();

  /** Opens a feed whose first message (`ready`) holds `sessions`, the ones that match `options` now. */
  watch(sessions: readonly SessionRecord[], options: SessionsFeedOptions): AsyncQueue<kiln.WatchSessionsResponse> {
    const w: FeedWatcher = {
      ...options,
      queue: new AsyncQueue(),
      changed: new Set(),
      deleted: [],
      eventsSent: new Map(),
      last: undefined,
    };
    const snapshot = sessions.map((s) => this.message(w, s));
    w.queue.push(create(kiln.WatchSessionsResponseSchema, { ready: true, sessions: snapshot }));
    this.watchers.add(w);
    return w.queue;
  }

  unwatch(queue: AsyncQueue<kiln.WatchSessionsResponse>): void {
    for (const w of this.watchers) {
      if (w.queue !== queue) continue;
      this.watchers.delete(w);
      this.dirty.delete(w);
    }
  }

  /** A task of `s` changed: its counts did. */
  taskChanged(s: SessionRecord): void {
    if (this.watchers.size === 0) return;
    for (const w of this.watchers) if (!w.omitTaskChanges) this.mark(w, s);
  }

  /** `s` was created, closed, or got an event. */
  sessionChanged(s: SessionRecord): void {
    for (const w of this.watchers) this.mark(w, s);
  }

  sessionDeleted(s: SessionRecord): void {
    for (const w of this.watchers) {
      if (w.ids && !w.ids.has(s.id)) continue;
      w.changed.delete(s);
      w.eventsSent.delete(s.id);
      w.deleted.push(s.id);
      this.dirty.add(w);
    }
  }

  /** Releases the changes of the commit that just finished. */
  flush(): void {
    for (const w of this.dirty) {
      const sessions = [...w.changed].map((s) => this.message(w, s));
      const deleted = w.deleted;
      w.changed.clear();
      w.deleted = [];
      if (w.last && w.queue.size > 0) mergeInto(w.last, sessions, deleted);
      else {
        w.last = create(kiln.WatchSessionsResponseSchema, { sessions, deletedSessionIds: deleted });
        w.queue.push(w.last);
      }
    }
    this.dirty.clear();
  }

  private mark(w: FeedWatcher, s: SessionRecord): void {
    if (w.ids && !w.ids.has(s.id)) return;
    w.changed.add(s);
    this.dirty.add(w);
  }

  /** `s` as this watcher gets it now: with the events it has not been sent yet, or none. */
  private message(w: FeedWatcher, s: SessionRecord): flame.Session {
    if (!w.events) return toSessionMessage(s, []);
    const sent = w.eventsSent.get(s.id) ?? 0;
    w.eventsSent.set(s.id, s.events.length);
    return toSessionMessage(s, s.events.slice(sent));
  }
}

/** Folds newer changes into a message not yet sent: a session's latest status wins, its new events add up. */
function mergeInto(msg: kiln.WatchSessionsResponse, sessions: flame.Session[], deleted: string[]): void {
  const gone = new Set(deleted);
  const byId = new Map(msg.sessions.filter((s) => !gone.has(s.metadata!.id)).map((s) => [s.metadata!.id, s]));
  for (const s of sessions) {
    const id = s.metadata!.id;
    const earlier = byId.get(id);
    if (earlier) s.status!.events = [...earlier.status!.events, ...s.status!.events];
    byId.set(id, s);
    gone.delete(id);
  }
  const recreated = new Set(sessions.map((s) => s.metadata!.id));
  msg.sessions = [...byId.values()];
  msg.deletedSessionIds = [...msg.deletedSessionIds.filter((id) => !recreated.has(id)), ...gone];
}
