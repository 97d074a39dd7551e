import { ErrorCode, KilnError } from "@kiln/protocol";
import { diskFullCode } from "../../util/disk-full.js";
import type { SqliteStore } from "./sqlite-store.js";

/**
 * Groups every store write made in one event-loop turn into a single
 * transaction. `write` queues a mutation; `flushed()` resolves once the
 * transaction holding everything queued so far has committed (what an API
 * call awaits before acknowledging). `afterCommit` hooks run after each
 * commit, so watchers never see a change that a crash could undo.
 *
 * A transaction that cannot commit (a full disk, above all) is rolled back,
 * so the store keeps only what was acknowledged; but memory already holds
 * the changes, so the commit fails for good: its waiters and every later one
 * get the refusal (RESOURCE_EXHAUSTED for a full disk), and `onFailure` is
 * told once, so the control plane can stop and restart from what it stored.
 */
export class GroupCommit {
  private queue: (() => void)[] = [];
  private waiters: { resolve(): void; reject(e: unknown): void }[] = [];
  private scheduled = false;
  private readonly afterCommitHooks: (() => void)[] = [];
  private failure: KilnError | undefined;

  constructor(
    private readonly store: SqliteStore,
    private readonly onFailure: (refusal: KilnError) => void = (refusal) => {
      throw refusal;
    },
  ) {}

  write(mutation: (store: SqliteStore) => void): void {
    this.queue.push(() => mutation(this.store));
    this.schedule();
  }

  flushed(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
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
    if (this.failure) {
      for (const w of waiters) w.reject(this.failure);
      return;
    }
    try {
      if (queue.length > 0) {
        this.store.transaction(() => {
          for (const m of queue) m();
        });
      }
    } catch (err) {
      this.failure = commitRefusal(err);
      for (const w of waiters) w.reject(this.failure);
      this.onFailure(this.failure);
      return;
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

/** What the callers of a commit that failed are told: the store is full, or it could not be written. */
function commitRefusal(err: unknown): KilnError {
  const full = diskFullCode(err);
  return full
    ? new KilnError(
        ErrorCode.ResourceExhausted,
        `the control plane's store is full (${full}): nothing of this request was stored, and the control plane stops`,
        { cause: err },
      )
    : new KilnError(
        ErrorCode.Internal,
        `the control plane could not write its store (${(err as Error).message}): nothing of this request was stored, and the control plane stops`,
        { cause: err },
      );
}
