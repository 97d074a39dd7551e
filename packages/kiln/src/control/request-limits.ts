import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { flame, kiln } from "@kiln/protocol/proto";
import type { BodyLimit } from "../net/request-gate.js";

/** Room for the rest of a request that carries one task input or common data (ids, spec, framing). */
export const TASK_ENVELOPE_BYTES = 64 * 1024;
/** Every other request is a few ids and names, or an application spec. */
const SMALL_REQUEST: BodyLimit = { bytes: 1024 * 1024, setBy: "fixed: requests of this route are small" };

/** Requests that carry one task input or a session's common data. */
const TASK_SIZED: readonly DescMethod[] = [
  flame.Frontend.method.createTask,
  flame.Frontend.method.createSession,
  flame.Frontend.method.openSession,
];
/** Requests (or stream messages) that carry many tasks, or an agent's batch of results. */
const BATCH_SIZED: readonly DescMethod[] = [
  kiln.Frontend.method.createTasks,
  kiln.Frontend.method.submitTasks,
  kiln.Agent.method.connect,
];

/**
 * What each control-plane route accepts, from the configured limits: a task input's worth
 * (`maxTaskBytes` + {@link TASK_ENVELOPE_BYTES}) where a request carries one, `maxRequestBytes` where
 * it carries a batch, and 1 MiB elsewhere. For a stream, the limit is of each message.
 *
 * @example
 * const limits = new RequestLimits(16 << 20, 64 << 20, [flame.Frontend]);
 * limits.ofPath("/flame.v1.Frontend/CreateTask") // { bytes: 16842752, setBy: "--max-task-bytes + 64 KiB" }
 */
export class RequestLimits {
  private readonly task: BodyLimit;
  private readonly batch: BodyLimit;
  /** Unary routes only: a stream's body is many messages, each held to the limit by the stream reader. */
  private readonly unaryByPath = new Map<string, BodyLimit>();

  constructor(
    maxTaskBytes: number,
    private readonly maxRequestBytes: number,
    services: readonly DescService[],
  ) {
    this.task = { bytes: maxTaskBytes + TASK_ENVELOPE_BYTES, setBy: "--max-task-bytes + 64 KiB" };
    this.batch = { bytes: maxRequestBytes, setBy: "--max-request-bytes" };
    for (const service of services)
      for (const method of service.methods)
        if (method.methodKind === "unary") this.unaryByPath.set(`/${service.typeName}/${method.name}`, this.of(method));
  }

  /** The limit of one method's request (of each message, for a stream). */
  of(method: DescMethod): BodyLimit {
    if (TASK_SIZED.includes(method)) return this.task;
    return BATCH_SIZED.includes(method) ? this.batch : SMALL_REQUEST;
  }

  /** The whole-body limit of the route at `path`: a unary method's; none for a stream or an unknown path. */
  ofPath = (path: string): BodyLimit | undefined => this.unaryByPath.get(path);

  /** The largest message any stream accepts (the stream reader takes one limit). */
  get streamMessageBytes(): number {
    return this.maxRequestBytes;
  }
}
