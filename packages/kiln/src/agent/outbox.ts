import { create } from "@bufbuild/protobuf";
import { kiln } from "@kiln/protocol/proto";

/** Completions per message at most; more in one event-loop turn go out as several messages. */
export const MAX_COMPLETIONS_PER_MESSAGE = 512;
/**
 * Task output bytes per message at most (a larger output goes alone): far below the control plane's
 * per-message limit (--max-request-bytes, 64 MiB by default), so many large outputs never add up past it.
 */
export const MAX_COMPLETION_BYTES_PER_MESSAGE = 4 * 1024 * 1024;

const refKey = (r: { sessionId: string; taskId: string; attempt: number }) => `${r.sessionId}/${r.taskId}/${r.attempt}`;

/**
 * What the agent sends to the control plane, in order. Completions made in
 * one event-loop turn become one Completions message (at most 512 each, and
 * at most 4 MiB of outputs unless one output is larger);
 * a report first closes the completions before it, so the control plane
 * never sees an executor's completion after its UNBOUND. While no stream is
 * registered everything waits here and goes out after the next Registered.
 */
export class Outbox {
  private readonly queue: kiln.AgentMessage[] = [];
  private filling: kiln.Completion[] | undefined;
  private fillingBytes = 0;
  private reader: AbortSignal | undefined;
  private waiter: { signal: AbortSignal; resolve(m: kiln.AgentMessage | undefined): void } | undefined;
  private ended = false;

  completion(c: kiln.Completion): void {
    if (this.ended) return;
    const size = c.output?.byteLength ?? 0;
    if (this.filling && this.fillingBytes + size > MAX_COMPLETION_BYTES_PER_MESSAGE) this.seal();
    if (!this.filling) {
      this.filling = [];
      const batch = this.filling;
      setImmediate(() => {
        if (this.filling === batch) this.seal();
      });
    }
    this.filling.push(c);
    this.fillingBytes += size;
    if (this.filling.length >= MAX_COMPLETIONS_PER_MESSAGE) this.seal();
  }

  report(r: kiln.ExecutorReport): void {
    if (this.ended) return;
    this.seal();
    const last = this.queue.at(-1);
    if (last?.kind.case === "executors") last.kind.value.reports.push(r);
    else this.enqueue({ case: "executors", value: create(kiln.ExecutorReportsSchema, { reports: [r] }) });
    this.wake();
  }

  /** Queued only while a stream reads: a heartbeat has no value later. */
  heartbeat(): void {
    if (this.ended || !this.reader || this.reader.aborted) return;
    this.enqueue({ case: "heartbeat", value: create(kiln.HeartbeatSchema, { time: BigInt(Date.now()) }) });
    this.wake();
  }

  /** Lets the stream owning `signal` read (after its Registered); it stops when `signal` aborts. */
  openFor(signal: AbortSignal): void {
    this.reader = signal;
    this.wake();
  }

  /** The next message for the stream owning `signal`; undefined once that stream is over or the outbox ended. */
  next(signal: AbortSignal): Promise<kiln.AgentMessage | undefined> {
    const ready = this.take(signal);
    if (ready || signal.aborted || (this.ended && this.queue.length === 0)) return Promise.resolve(ready);
    return new Promise((resolve) => {
      const onAbort = () => this.wake();
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiter = {
        signal,
        resolve: (m) => {
          signal.removeEventListener("abort", onAbort);
          resolve(m);
        },
      };
    });
  }

  /** Drops the completions of these tasks (the control plane no longer expects them). */
  forget(refs: readonly kiln.TaskRef[]): void {
    if (refs.length === 0) return;
    const keys = new Set(refs.map(refKey));
    const keep = (c: kiln.Completion) => !keys.has(refKey(c));
    if (this.filling) this.filling = this.filling.filter(keep);
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const kind = this.queue[i]!.kind;
      if (kind.case !== "completions") continue;
      kind.value.completions = kind.value.completions.filter(keep);
      if (kind.value.completions.length === 0) this.queue.splice(i, 1);
    }
  }

  /** Tasks of `executorId` whose completions wait here: still held, as far as the control plane knows. */
  waitingTasks(executorId: string): kiln.TaskRef[] {
    const all = [...this.queue.flatMap((m) => (m.kind.case === "completions" ? m.kind.value.completions : []))];
    if (this.filling) all.push(...this.filling);
    return all
      .filter((c) => c.executorId === executorId)
      .map((c) => create(kiln.TaskRefSchema, { sessionId: c.sessionId, taskId: c.taskId, attempt: c.attempt }));
  }

  /** Sends what is queued, then ends the stream (its reader gets undefined). */
  end(): void {
    this.seal();
    this.ended = true;
    this.wake();
  }

  private seal(): void {
    const batch = this.filling;
    this.filling = undefined;
    this.fillingBytes = 0;
    if (!batch || batch.length === 0) return;
    this.enqueue({ case: "completions", value: create(kiln.CompletionsSchema, { completions: batch }) });
    this.wake();
  }

  private enqueue(kind: kiln.AgentMessage["kind"]): void {
    this.queue.push(create(kiln.AgentMessageSchema, { kind }));
  }

  private take(signal: AbortSignal): kiln.AgentMessage | undefined {
    if (signal.aborted || signal !== this.reader) return undefined;
    return this.queue.shift();
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    const message = this.take(w.signal);
    if (message || w.signal.aborted || (this.ended && this.queue.length === 0)) {
      this.waiter = undefined;
      w.resolve(message);
    }
  }
}
