import { create } from "@bufbuild/protobuf";
import { flame } from "@kiln/protocol/proto";
import { eventMessage } from "@kiln/protocol";
import type { StoredEvent, StoredTask } from "../store/store.js";
import type { SessionRecord } from "../sessions.js";

function toEvents(events: readonly StoredEvent[]): flame.Event[] {
  return events.map((e) =>
    create(flame.EventSchema, {
      code: e.code,
      creationTime: BigInt(e.time),
      // Events stored by older versions may have no message (a task's creation had none).
      message: eventMessage(e.code, e.message),
    }),
  );
}

/** A session as the API shows it; `events` replaces its full event list (a watch sends only the new ones). */
export function toSessionMessage(s: SessionRecord, events: readonly StoredEvent[] = s.events): flame.Session {
  return create(flame.SessionSchema, {
    metadata: { id: s.id, name: s.id },
    spec: s.spec,
    status: {
      state: s.state,
      creationTime: BigInt(s.creationTime),
      ...(s.completionTime !== undefined ? { completionTime: BigInt(s.completionTime) } : {}),
      ...s.counts,
      events: toEvents(events),
    },
  });
}

/** A task as the API shows it; `omitData` leaves its input and output out. */
export function toTaskMessage(t: StoredTask, omitData = false): flame.Task {
  return create(flame.TaskSchema, {
    metadata: { id: String(t.id), name: String(t.id) },
    spec: {
      sessionId: t.sessionId,
      ...(t.input && !omitData ? { input: t.input } : {}),
      ...(t.output && !omitData ? { output: t.output } : {}),
    },
    status: {
      state: t.state,
      creationTime: BigInt(t.creationTime),
      ...(t.completionTime !== undefined ? { completionTime: BigInt(t.completionTime) } : {}),
      events: toEvents(t.events),
    },
  });
}
