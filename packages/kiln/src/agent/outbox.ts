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
 *
 * A completion stays here after it is sent, until the control plane
 * acknowledges that it committed it (CompletionsAck): a control plane killed
 * before its commit never saw it, so the next stream sends it again, and
 * until then the agent reports its task as held, so the control plane does
 * not run it a second time. Completions are numbered (seq) for the ack.
 */
export class Outbox {
  private readonly queue: kiln.AgentMessage[] = [];
  private filling: kiln.Completion[] | undefined;
  private fillingBytes = 0;
  /** Sent and not yet acknowledged, in seq order. */
  private unacked: kiln.Completion[] = [];
  private nextSeq = 1n;
  private reader: AbortSignal | undefined;
  private waiter: { signal: AbortSignal; resolve(m: kiln.AgentMessage | undefined): void } | undefined;
  private ended = false;

  completion(c: kiln.Completion): void {
    if (this.ended) return;
    c.seq = this.nextSeq++;
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

  /**
   * Lets the stream owning `signal` read (after its Registered); it stops when
   * `signal` aborts. What an earlier stream sent without an ack goes first.
   */
  openFor(signal: AbortSignal): void {
    this.reader = signal;
    const resend = this.unacked;
    this.unacked = [];
    const messages = completionMessages(resend).map((completions) =>
      create(kiln.AgentMessageSchema, { kind: { case: "completions", value: { completions } } }),
    );
    this.queue.unshift(...messages);
    this.wake();
  }

  /** The control plane committed (or fenced off) every completion up to `throughSeq`. */
  acknowledged(throughSeq: bigint): void {
    let n = 0;
    while (n < this.unacked.length && this.unacked[n]!.seq <= throughSeq) n++;
    if (n > 0) this.unacked.splice(0, n);
    this.wake();
  }

  /**
   * The next message for the stream owning `signal`; undefined once that
   * stream is over, or the outbox ended and everything sent was acknowledged.
   */
  next(signal: AbortSignal): Promise<kiln.AgentMessage | undefined> {
    const ready = this.take(signal);
    if (ready || signal.aborted || this.drained()) return Promise.resolve(ready);
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
    this.unacked = this.unacked.filter(keep);
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const kind = this.queue[i]!.kind;
      if (kind.case !== "completions") continue;
      kind.value.completions = kind.value.completions.filter(keep);
      if (kind.value.completions.length === 0) this.queue.splice(i, 1);
    }
  }

  /** Tasks of `executorId` whose completions wait here (unsent or unacknowledged): still held, as far as the control plane knows. */
  waitingTasks(executorId: string): kiln.TaskRef[] {
    const all = [
      ...this.unacked,
      ...this.queue.flatMap((m) => (m.kind.case === "completions" ? m.kind.value.completions : [])),
    ];
    if (this.filling) all.push(...this.filling);
    return all
      .filter((c) => c.executorId === executorId)
      .map((c) => create(kiln.TaskRefSchema, { sessionId: c.sessionId, taskId: c.taskId, attempt: c.attempt }));
  }

  /** Sends what is queued, then ends the stream once all of it is acknowledged (its reader gets undefined). */
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
    const message = this.queue.shift();
    if (message?.kind.case === "completions") this.unacked.push(...message.kind.value.completions);
    return message;
  }

  /** Ended, with nothing left to send or to wait an ack for. */
  private drained(): boolean {
    return this.ended && this.queue.length === 0 && this.unacked.length === 0;
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    const message = this.take(w.signal);
    if (message || w.signal.aborted || this.drained()) {
      this.waiter = undefined;
      w.resolve(message);
    }
  }
}

/** Splits completions into messages within both per-message limits (count, and output bytes unless one output is larger). */
function completionMessages(completions: readonly kiln.Completion[]): kiln.Completion[][] {
  const messages: kiln.Completion[][] = [];
  let current: kiln.Completion[] = [];
  let bytes = 0;
  for (const c of completions) {
    const size = c.output?.byteLength ?? 0;
    if (
      current.length > 0 &&
      (current.length >= MAX_COMPLETIONS_PER_MESSAGE || bytes + size > MAX_COMPLETION_BYTES_PER_MESSAGE)
    ) {
      messages.push(current);
      current = [];
      bytes = 0;
    }
    current.push(c);
    bytes += size;
  }
  if (current.length > 0) messages.push(current);
  return messages;
}
