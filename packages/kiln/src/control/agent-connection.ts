import { create } from "@bufbuild/protobuf";
import { kiln } from "@kiln/sdk/proto";
import { AsyncQueue } from "../util/async-queue.js";

/**
 * The control plane's end of one agent's stream. Task assignments made in
 * one event-loop turn leave as a single TaskBatch message.
 */
export class AgentConnection {
  readonly outbound = new AsyncQueue<kiln.ControlMessage>();
  lastSeen = Date.now();
  nodeName: string | undefined;
  private batch: kiln.TaskAssignment[] = [];
  private flushScheduled = false;

  send(kind: kiln.ControlMessage["kind"]): void {
    this.flushTasks();
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
      setImmediate(() => this.flushTasks());
    }
  }

  close(reason?: Error): void {
    this.flushTasks();
    if (reason) this.outbound.fail(reason);
    else this.outbound.end();
  }

  private flushTasks(): void {
    this.flushScheduled = false;
    if (this.batch.length === 0) return;
    const tasks = this.batch;
    this.batch = [];
    this.outbound.push(create(kiln.ControlMessageSchema, { kind: { case: "tasks", value: { tasks } } }));
  }
}
