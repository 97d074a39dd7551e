/**
 * A push queue read as an async iterable of batches: everything pushed in one
 * event-loop turn comes out as one array (flushed on `setImmediate`), and a
 * batch never holds more than `maxBatch` items. It turns many small events
 * (task results, task assignments) into few messages without adding a timer's
 * worth of latency.
 *
 * @example
 * const q = new BatchQueue<string>(512);
 * q.push("a"); q.push("b");
 * for await (const batch of q) console.log(batch); // ["a", "b"]
 */
export class BatchQueue<T> implements AsyncIterable<T[]> {
  private items: T[] = [];
  private ready = false;
  private flushScheduled = false;
  private ended = false;
  private failure: { error: unknown } | undefined;
  private waiting: { resolve(r: IteratorResult<T[]>): void; reject(e: unknown): void } | undefined;

  constructor(private readonly maxBatch = Number.POSITIVE_INFINITY) {}

  /** Items pushed and not yet handed out. */
  get size(): number {
    return this.items.length;
  }

  get closed(): boolean {
    return this.ended;
  }

  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    if (this.items.length >= this.maxBatch) {
      this.ready = true;
      this.deliver();
    } else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.ready = this.items.length > 0;
        this.deliver();
      });
    }
  }

  /** Ends the iteration once the items already pushed are handed out. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.ready = this.items.length > 0;
    this.deliver();
  }

  /** Makes the iteration throw `error`; items not handed out yet are dropped. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = { error };
    this.items = [];
    this.deliver();
  }

  private take(): T[] {
    if (this.items.length <= this.maxBatch) {
      const batch = this.items;
      this.items = [];
      this.ready = false;
      return batch;
    }
    return this.items.splice(0, this.maxBatch);
  }

  private settled(): IteratorResult<T[]> | undefined {
    if (this.ready && this.items.length > 0) return { value: this.take(), done: false };
    if (this.ended && !this.failure && this.items.length === 0) return { value: undefined, done: true };
    return undefined;
  }

  private deliver(): void {
    const waiter = this.waiting;
    if (!waiter) return;
    if (this.failure) {
      this.waiting = undefined;
      waiter.reject(this.failure.error);
      return;
    }
    const result = this.settled();
    if (result) {
      this.waiting = undefined;
      waiter.resolve(result);
    }
  }

  private next(): Promise<IteratorResult<T[]>> {
    if (this.failure) return Promise.reject(this.failure.error);
    const result = this.settled();
    if (result) return Promise.resolve(result);
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<T[]> {
    return {
      next: () => this.next(),
      return: async () => {
        this.end();
        this.items = [];
        return { value: undefined, done: true };
      },
    };
  }
}
