import { flame } from "@kiln/protocol/proto";
import type { SessionRecord, SessionRegistry } from "./sessions.js";

/** Sessions deleted per turn of the event loop, so a backlog (at start, or after a clock jump) never stalls serving. */
const BATCH = 100;
/** setTimeout's longest delay (about 24.8 days); a later expiry re-arms on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Expiry {
  sessionId: string;
  /** Unix ms: close time + retention. */
  at: number;
}

/**
 * Deletes closed sessions (tasks, events and all, through SessionRegistry.delete, so watchers and the
 * sessions feed hear of it) once they have been closed `retentionMs`. The closed sessions wait in a list
 * sorted by expiry with one timer for the first, so nothing polls every session. A session that is due
 * while tasks it had running still run (closing cancels only pending ones) waits for the last of them
 * to end, as `kiln delete -s` would refuse it until then.
 */
export class Retention {
  /** Sorted by `at`; entries before `head` are done. Close times only grow, so inserting is an append. */
  private entries: Expiry[] = [];
  private head = 0;
  /** Due, but with tasks still running. */
  private readonly waiting = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private stopped = false;

  constructor(
    private readonly sessions: SessionRegistry,
    private readonly retentionMs: number,
  ) {}

  /** Takes in the closed sessions loaded from the store; those already past retention go first, in batches. */
  start(): void {
    const closed = this.sessions.list().filter((s) => s.state === flame.SessionState.Closed);
    this.entries = closed.map((s) => this.expiryOf(s)).sort((a, b) => a.at - b.at);
    this.head = 0;
    this.arm();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  sessionEnded(s: SessionRecord): void {
    this.insert(this.expiryOf(s));
    this.arm();
  }

  /** A task of a session that waits for its running tasks changed: the last one ending frees it. */
  taskChanged(s: SessionRecord): void {
    if (s.counts.running > 0 || !this.waiting.delete(s.id)) return;
    this.insert({ sessionId: s.id, at: Date.now() });
    this.arm();
  }

  /** Deleted by request (or recreated later under the same id): its entry is skipped when it comes up. */
  sessionDeleted(s: SessionRecord): void {
    this.waiting.delete(s.id);
  }

  private expiryOf(s: SessionRecord): Expiry {
    return { sessionId: s.id, at: (s.completionTime ?? s.creationTime) + this.retentionMs };
  }

  private insert(e: Expiry): void {
    let i = this.entries.length;
    while (i > this.head && this.entries[i - 1]!.at > e.at) i--;
    this.entries.splice(i, 0, e);
  }

  /** One timer, for the first expiry. */
  private arm(): void {
    if (this.stopped) return;
    const first = this.entries[this.head];
    if (!first) return;
    if (this.timer && this.timerAt <= first.at) return;
    clearTimeout(this.timer);
    this.timerAt = first.at;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, first.at - Date.now()));
    this.timer = setTimeout(() => this.expire(), delay).unref();
  }

  private expire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = Date.now();
    let deleted = 0;
    while (deleted < BATCH && this.head < this.entries.length && this.entries[this.head]!.at <= now) {
      const { sessionId } = this.entries[this.head++]!;
      const s = this.sessions.get(sessionId);
      // Gone already, open again under that id, or closed again later (it has a later entry of its own).
      if (!s || s.state !== flame.SessionState.Closed || this.expiryOf(s).at > now) continue;
      if (s.counts.running > 0) {
        this.waiting.add(s.id);
        continue;
      }
      this.sessions.delete(sessionId);
      deleted++;
    }
    // Drop the done prefix once it is most of the array, so popping stays O(1) amortised.
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    this.arm();
  }
}
