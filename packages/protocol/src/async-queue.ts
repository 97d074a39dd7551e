/** What a producer that bounds its queue needs to hear from the consumer's side. */
export interface QueueHooks<T> {
  /** An item was handed to the consumer. */
  taken?: (item: T) => void;
  /** The consumer asked for an item and none was queued. */
  starved?: () => void;
}

/**
 * A push queue consumed as an async iterable: the bridge between
 * event-driven producers (task changes, agent commands) and a streaming RPC
 * handler that yields messages. `end()` finishes the iteration; `fail(err)`
 * makes it throw. It has no bound of its own; a producer that needs one
 * counts what it pushes and what `hooks.taken` reports, and `clear()`s.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private head = 0;
  private waiting: ((r: IteratorResult<T>) => void) | undefined;
  private rejectWaiting: ((e: unknown) => void) | undefined;
  private done = false;
  private error: unknown;

  constructor(private readonly hooks: QueueHooks<T> = {}) {}

  get closed(): boolean {
    return this.done;
  }

  /** Items pushed and not yet handed out (none while the consumer waits for one). */
  get size(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    if (this.done) return;
    const resolve = this.waiting;
    if (resolve) {
      this.waiting = this.rejectWaiting = undefined;
      this.hooks.taken?.(item);
      resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  /** Drops the items not handed out yet. */
  clear(): void {
    this.items = [];
    this.head = 0;
  }

  end(): void {
    if (this.done) return;
    this.done = true;
    const resolve = this.waiting;
    this.waiting = this.rejectWaiting = undefined;
    resolve?.({ value: undefined, done: true });
  }

  fail(err: unknown): void {
    if (this.done) return;
    this.error = err;
    this.done = true;
    const reject = this.rejectWaiting;
    this.waiting = this.rejectWaiting = undefined;
    reject?.(err);
  }

  private next(): Promise<IteratorResult<T>> {
    if (this.head === this.items.length && !this.done) this.hooks.starved?.();
    if (this.head < this.items.length) {
      const value = this.items[this.head]!;
      // Let go of what was handed out: a reader that never quite catches up must not keep it all.
      (this.items as (T | undefined)[])[this.head++] = undefined;
      if (this.head === this.items.length) {
        this.items = [];
        this.head = 0;
      } else if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      this.hooks.taken?.(value);
      return Promise.resolve({ value, done: false });
    }
    if (this.error !== undefined) return Promise.reject(this.error);
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.rejectWaiting = reject;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return { next: () => this.next(), return: async () => (this.end(), { value: undefined, done: true }) };
  }
}

/** Yields a queue's items until it ends or `signal` aborts (a client went away), then runs `cleanup`. */
export async function* untilAborted<T>(
  queue: AsyncQueue<T>,
  signal: AbortSignal,
  cleanup: () => void,
): AsyncGenerator<T> {
  const stop = () => queue.end();
  signal.addEventListener("abort", stop);
  try {
    yield* queue;
  } finally {
    signal.removeEventListener("abort", stop);
    cleanup();
  }
}
