import { create } from "@bufbuild/protobuf";
import { kiln } from "@kiln/protocol/proto";
import { AsyncQueue } from "@kiln/protocol";

/**
 * The control plane's end of one agent's stream. Task assignments made in
 * one event-loop turn leave as a single TaskBatch message (or earlier, at `flush()`).
 */
export class AgentConnection {
  readonly outbound = new AsyncQueue<kiln.ControlMessage>();
  readonly openedAt = Date.now();
  lastSeen = this.openedAt;
  nodeName: string | undefined;
  /** The agent process on the other end, from its Register (see Orchestrator.register). */
  agent: { instanceId: string; pid: number } | undefined;
  private batch: kiln.TaskAssignment[] = [];
  private flushScheduled = false;
  /** Highest completion seq received on this stream, and the highest acknowledged. */
  private receivedSeq = 0n;
  private ackedSeq = 0n;

  /** Notes a completion read from this stream; it is acknowledged after the next commit. */
  received(seq: bigint): void {
    if (seq > this.receivedSeq) this.receivedSeq = seq;
  }

  /** Called after a commit: every completion received so far is in the store (or was fenced off), so the agent may forget it. */
  acknowledgeCommitted(): void {
    if (this.receivedSeq <= this.ackedSeq) return;
    this.ackedSeq = this.receivedSeq;
    this.send({ case: "completionsAck", value: create(kiln.CompletionsAckSchema, { throughSeq: this.ackedSeq }) });
  }

  send(kind: kiln.ControlMessage["kind"]): void {
    this.flush();
    this.outbound.push(create(kiln.ControlMessageSchema, { kind }));
  }

  assign(executorId: string, sessionId: string, taskId: number, attempt: number, input: Uint8Array | undefined): void {
    this.batch.push(
      create(kiln.TaskAssignmentSchema, {
        executorId,
        sessionId,
        taskId: String(taskId),
        attempt,
        ...(input ? { input } : {}),
      }),
    );
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  close(reason?: Error): void {
    this.flush();
    if (reason) this.outbound.fail(reason);
    else this.outbound.end();
  }

  /** Sends the assignments made so far now, instead of at the end of the event-loop turn. */
  flush(): void {
    this.flushScheduled = false;
    if (this.batch.length === 0) return;
    const tasks = this.batch;
    this.batch = [];
    this.outbound.push(create(kiln.ControlMessageSchema, { kind: { case: "tasks", value: { tasks } } }));
  }
}
