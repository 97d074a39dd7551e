import type { SqliteStore } from "./sqlite-store.js";

/**
 * Groups every store write made in one event-loop turn into a single
 * transaction. `write` queues a mutation; `flushed()` resolves once the
 * transaction holding everything queued so far has committed (what an API
 * call awaits before acknowledging). `afterCommit` hooks run after each
 * commit, so watchers never see a change that a crash could undo.
 */
export class GroupCommit {
  private queue: (() => void)[] = [];
  private waiters: { resolve(): void; reject(e: unknown): void }[] = [];
  private scheduled = false;
  private readonly afterCommitHooks: (() => void)[] = [];

  constructor(private readonly store: SqliteStore) {}

  write(mutation: (store: SqliteStore) => void): void {
    this.queue.push(() => mutation(this.store));
    this.schedule();
  }

  flushed(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.schedule();
    });
  }

  /** Ends this turn with a commit even if nothing was written, so `onCommit` hooks still run. */
  flushSoon(): void {
    this.schedule();
  }

  onCommit(hook: () => void): void {
    this.afterCommitHooks.push(hook);
  }

  /** Commits now (used at shutdown and by tests). */
  flushNow(): void {
    this.scheduled = false;
    const queue = this.queue;
    const waiters = this.waiters;
    this.queue = [];
    this.waiters = [];
    try {
      if (queue.length > 0) {
        this.store.transaction(() => {
          for (const m of queue) m();
        });
      }
    } catch (err) {
      for (const w of waiters) w.reject(err);
      throw err;
    }
    // Hooks first: they hand new work to agents and changes to watchers, and the
    // API replies the waiters send can wait the few hundred microseconds they take.
    try {
      for (const hook of this.afterCommitHooks) hook();
    } finally {
      for (const w of waiters) w.resolve();
    }
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flushNow());
  }
}
