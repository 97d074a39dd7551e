import type { TaskRecord } from "./sessions.js";

/**
 * A session's pending tasks in dispatch order: requeued tasks first (they
 * are the oldest work), then new tasks FIFO. Entries that stopped being
 * Pending (cancelled, adopted after a restart) are skipped lazily, so removal
 * is O(1).
 */
export class TaskQueue {
  private retried: TaskRecord[] = [];
  private items: TaskRecord[] = [];
  private head = 0;

  push(task: TaskRecord): void {
    this.items.push(task);
  }

  pushFront(task: TaskRecord): void {
    this.retried.push(task);
  }

  /** The next task still Pending, or undefined. */
  shift(isPending: (t: TaskRecord) => boolean): TaskRecord | undefined {
    while (this.retried.length > 0) {
      const t = this.retried.pop()!;
      if (isPending(t)) return t;
    }
    while (this.head < this.items.length) {
      const t = this.items[this.head]!;
      // A task taken leaves the queue at once: the finished ones behind the head must not stay in memory.
      (this.items as (TaskRecord | undefined)[])[this.head++] = undefined;
      if (this.head > 4096 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      if (isPending(t)) return t;
    }
    return undefined;
  }

  clear(): void {
    this.retried = [];
    this.items = [];
    this.head = 0;
  }
}
