import { ErrorCode, KilnError } from "@kiln/protocol";
import { diskFullCode } from "../../util/disk-full.js";
import type { Store, StoreWriter } from "./store.js";

/** A mutation, and optionally what to do once it is committed (see GroupCommit.write). */
type Mutation = (w: StoreWriter) => void | (() => void);

interface Waiter {
  resolve(): void;
  reject(e: unknown): void;
}

/**
 * Groups every store write made in one event-loop turn into a single
 * transaction. `write` queues a mutation; `flushed()` resolves once the
 * transaction holding everything queued so far has committed (what an API
 * call awaits before acknowledging). `afterCommit` hooks run after each
 * commit, so watchers never see a change that a crash could undo.
 *
 * A store whose commits take a round trip (PostgreSQL) has one commit in
 * flight at a time; what is written meanwhile gathers into the next one, so a
 * slower store makes commits larger, not more numerous. Commits keep their order.
 *
 * A transaction that cannot commit (a full disk, above all) is rolled back,
 * so the store keeps only what was acknowledged; but memory already holds
 * the changes, so the commit fails for good: its waiters and every later one
 * get the refusal (RESOURCE_EXHAUSTED for a full disk), and `onFailure` is
 * told once, so the control plane can stop and restart from what it stored.
 */
export class GroupCommit {
  private queue: Mutation[] = [];
  private waiters: Waiter[] = [];
  private scheduled = false;
  private inFlight: Promise<void> | undefined;
  private readonly afterCommitHooks: (() => void)[] = [];
  private failure: KilnError | undefined;

  constructor(
    private readonly store: Store,
    private readonly onFailure: (refusal: KilnError) => void = (refusal) => {
      throw refusal;
    },
  ) {}

  /** Queues a mutation for this turn's commit; what it returns runs once that commit has landed. */
  write(mutation: Mutation): void {
    this.queue.push(mutation);
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

  /** Commits what is queued now, after the commit in flight if there is one; settles once it landed (or failed). */
  async settle(): Promise<void> {
    await this.inFlight;
    this.commitQueued();
    await this.inFlight;
  }

  private commitQueued(): void {
    this.scheduled = false;
    if (this.inFlight) return; // the commit in flight takes this batch up when it lands
    const queue = this.queue;
    const waiters = this.waiters;
    this.queue = [];
    this.waiters = [];
    if (this.failure) {
      for (const w of waiters) w.reject(this.failure);
      return;
    }
    const landed: (() => void)[] = [];
    let pending: void | Promise<void> = undefined;
    try {
      if (queue.length > 0)
        pending = this.store.commit((w) => {
          for (const m of queue) {
            const then = m(w);
            if (then) landed.push(then);
          }
        });
    } catch (err) {
      this.fail(err, waiters);
      return;
    }
    if (!pending) {
      this.committed(landed, waiters);
      return;
    }
    this.inFlight = pending.then(
      () => {
        this.inFlight = undefined;
        this.committed(landed, waiters);
        if (this.queue.length > 0 || this.waiters.length > 0) this.schedule();
      },
      (err: unknown) => {
        this.inFlight = undefined;
        this.fail(err, waiters);
        for (const w of this.waiters.splice(0)) w.reject(this.failure);
      },
    );
  }

  private committed(landed: readonly (() => void)[], waiters: readonly Waiter[]): void {
    // Hooks first: they hand new work to agents and changes to watchers, and the
    // API replies the waiters send can wait the few hundred microseconds they take.
    try {
      for (const then of landed) then();
      for (const hook of this.afterCommitHooks) hook();
    } finally {
      for (const w of waiters) w.resolve();
    }
  }

  private fail(err: unknown, waiters: readonly Waiter[]): void {
    this.failure = commitRefusal(err);
    for (const w of waiters) w.reject(this.failure);
    this.onFailure(this.failure);
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.commitQueued());
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
