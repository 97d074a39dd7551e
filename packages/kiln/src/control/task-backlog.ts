/** A run of consecutive task ids, both ends included. */
export interface IdSpan {
  from: number;
  to: number;
}

/**
 * The pending tasks of a session that are kept only in the store: their ids, as sorted disjoint spans
 * (tasks are created in batches of consecutive ids, so a backlog of any size is a few spans). A session
 * keeps a bounded number of pending tasks in memory and reads the next ones back, in id order, as its
 * executors take them (SessionRegistry.refill). Any change to a backlog task takes it out of here first,
 * so a read that returns it after such a change finds it gone and drops it.
 */
export class TaskBacklog {
  private spans: IdSpan[] = [];
  /** Tasks in the spans. */
  size = 0;
  /** Ids up to this one have been committed, so a read of the store finds them. */
  storedThrough = 0;
  /** A read of the store is under way. */
  reading = false;

  /** Adds the ids `from`..`to`, all above every id held. */
  append(from: number, to: number): void {
    const last = this.spans[this.spans.length - 1];
    if (last && last.to + 1 === from) last.to = to;
    else this.spans.push({ from, to });
    this.size += to - from + 1;
  }

  has(id: number): boolean {
    return this.indexOf(id) >= 0;
  }

  /** Takes `id` out; false if it was not held. */
  delete(id: number): boolean {
    const i = this.indexOf(id);
    if (i < 0) return false;
    const span = this.spans[i]!;
    if (span.from === span.to) this.spans.splice(i, 1);
    else if (id === span.from) span.from++;
    else if (id === span.to) span.to--;
    else this.spans.splice(i, 1, { from: span.from, to: id - 1 }, { from: id + 1, to: span.to });
    this.size--;
    return true;
  }

  /** The lowest id held, or undefined. */
  first(): number | undefined {
    return this.spans[0]?.from;
  }

  /** Empties the backlog, returning what it held. */
  drain(): IdSpan[] {
    const spans = this.spans;
    this.spans = [];
    this.size = 0;
    return spans;
  }

  private indexOf(id: number): number {
    let lo = 0;
    let hi = this.spans.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const span = this.spans[mid]!;
      if (id < span.from) hi = mid - 1;
      else if (id > span.to) lo = mid + 1;
      else return mid;
    }
    return -1;
  }
}
