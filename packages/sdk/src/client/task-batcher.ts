/** How much goes into one request. */
export interface BatchLimits {
  maxItems: number;
  /** A single larger item still goes alone. */
  maxBytes: number;
  /** How long the first queued item waits for company; 0: until the end of this event-loop turn. */
  windowMs: number;
}

export const DEFAULT_BATCH_LIMITS: BatchLimits = { maxItems: 5_000, maxBytes: 4 * 1024 * 1024, windowMs: 0 };

/** The end index of the chunk that starts at `start`: at least one item, then as many as fit. */
function chunkEnd<T>(items: T[], start: number, sizeOf: (item: T) => number, limits: BatchLimits): number {
  let end = start;
  let bytes = 0;
  while (end < items.length && end - start < limits.maxItems) {
    const size = sizeOf(items[end]!);
    if (end > start && bytes + size > limits.maxBytes) break;
    bytes += size;
    end++;
  }
  return end;
}

/**
 * Splits items into consecutive chunks within the limits, keeping order.
 *
 * @example
 * chunk([a, b, c], (x) => x.length, { maxItems: 2, maxBytes: 1e6, windowMs: 1 }) // [[a, b], [c]]
 */
export function chunk<T>(items: T[], sizeOf: (item: T) => number, limits: BatchLimits): T[][] {
  const chunks: T[][] = [];
  for (let start = 0; start < items.length;) {
    const end = chunkEnd(items, start, sizeOf, limits);
    chunks.push(items.slice(start, end));
    start = end;
  }
  return chunks;
}

/**
 * Collects items added in the same tick (or within `windowMs`) and hands them
 * to `send` together. One send runs at a time: that keeps creation order, and
 * under load the next batch simply grows while the previous one is in flight.
 * `send` must settle its items itself and should not throw.
 *
 * @example
 * const batcher = new Batcher<Uint8Array>(async (batch) => { await rpc(batch); }, (b) => b.length);
 * batcher.add(new Uint8Array([1]));
 */
export class Batcher<T> {
  private queue: T[] = [];
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private scheduled = false;
  private sending = false;

  constructor(
    private readonly send: (batch: T[]) => Promise<void>,
    private readonly sizeOf: (item: T) => number,
    private readonly limits: BatchLimits = DEFAULT_BATCH_LIMITS,
  ) {}

  add(item: T): void {
    this.queue.push(item);
    this.queuedBytes += this.sizeOf(item);
    if (this.sending) return;
    if (this.isFull()) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      // A 1 ms timer costs every lone call over a millisecond; the end of the turn already gathers a burst.
      if (this.limits.windowMs > 0) this.timer = setTimeout(() => this.flush(), this.limits.windowMs);
      else setImmediate(() => this.flush());
    }
  }

  private isFull(): boolean {
    return this.queue.length >= this.limits.maxItems || this.queuedBytes >= this.limits.maxBytes;
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.scheduled = false;
    if (this.sending || this.queue.length === 0) return;
    const batch = this.queue.splice(0, chunkEnd(this.queue, 0, this.sizeOf, this.limits));
    this.queuedBytes -= batch.reduce((sum, item) => sum + this.sizeOf(item), 0);
    this.sending = true;
    const done = () => {
      this.sending = false;
      // Whatever queued meanwhile has already waited a whole round trip.
      this.flush();
    };
    this.send(batch).then(done, done);
  }
}
