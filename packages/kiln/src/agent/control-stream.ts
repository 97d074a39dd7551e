import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createClusterTransport, type TlsClientOptions } from "@kiln/protocol/transport";
import { kiln } from "@kiln/protocol/proto";
import { tlsFailureError, toKilnError } from "@kiln/protocol";
import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage } from "./bind-error.js";
import type { Outbox } from "./outbox.js";

export interface ControlStreamOptions {
  endpoint: string;
  token?: string;
  /** For an https endpoint: the CA, and the agent's client certificate when the control plane requires one. */
  tls?: TlsClientOptions;
  /** Used until the control plane's Registered names an interval. */
  heartbeatIntervalMs: number;
  /** Longest wait between reconnect attempts; see {@link reconnectDelayMs}. */
  reconnectMaxDelayMs: number;
  outbox: Outbox;
  /** The Register message for a new connection (the executors still live right now). */
  register(): kiln.Register;
  /** Called before anything buffered is sent on the new connection. */
  onRegistered(registered: kiln.Registered): void;
  onMessage(message: kiln.ControlMessage): void;
  log(line: string): void;
}

const BACKOFF_FIRST_MS = 250;
/** The default cap: a cluster is back within a couple of seconds of its control plane. */
export const DEFAULT_RECONNECT_MAX_DELAY_MS = 2_000;
const REGISTER_TIMEOUT_MS = 15_000;
// HTTP/2 pings find a control plane that vanished without closing the connection.
const PING_INTERVAL_MS = 10_000;
const PING_TIMEOUT_MS = 15_000;

/**
 * The wait before reconnect attempt `failures`: 250 ms doubling up to `maxMs`, each drawn from the upper
 * half so agents do not reconnect in step, and never above `maxMs` however long the outage.
 *
 * @example
 * reconnectDelayMs(1, 2_000)  // 125..250
 * reconnectDelayMs(50, 2_000) // 1000..2000
 */
export function reconnectDelayMs(failures: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, BACKOFF_FIRST_MS * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * Refusals that retrying cannot fix by itself at start: a wrong token, or a
 * node name another live agent holds. Once registered, the agent retries
 * them like any other failure (the other agent may go away).
 */
function isRefusal(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unauthenticated || code === Code.PermissionDenied || code === Code.AlreadyExists;
}

/**
 * The agent's kiln.v1.Agent/Connect stream: connects, registers, sends
 * heartbeats and the outbox, passes completion acks to the outbox, hands
 * other control messages over, and reconnects with backoff whenever the
 * stream fails.
 */
export class ControlStream {
  /** Resolves with the first Registered; rejects if the control plane refuses the agent (its token, or its node name). */
  readonly firstRegistered: Promise<kiln.Registered>;
  private resolveFirst!: (r: kiln.Registered) => void;
  private rejectFirst!: (err: Error) => void;
  private everRegistered = false;
  private closing = false;
  private current: AbortController | undefined;
  private readonly wakeBackoff = new AbortController();
  private loop: Promise<void> = Promise.resolve();

  constructor(private readonly o: ControlStreamOptions) {
    this.firstRegistered = new Promise((resolve, reject) => {
      this.resolveFirst = resolve;
      this.rejectFirst = reject;
    });
    // Rejection is reported through firstRegistered's awaiter; avoid an unhandled rejection if nobody awaits.
    this.firstRegistered.catch(() => {});
  }

  start(): void {
    this.loop = this.run();
  }

  /** Sends what the outbox still holds (up to `flushTimeoutMs`), ends the stream, stops reconnecting. */
  async close(flushTimeoutMs = 2_000): Promise<void> {
    this.closing = true;
    this.o.outbox.end();
    this.wakeBackoff.abort();
    const timer = setTimeout(() => this.current?.abort(), flushTimeoutMs);
    try {
      await this.loop;
    } finally {
      clearTimeout(timer);
    }
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closing) {
      const { registered, error } = await this.connectOnce();
      if (this.closing) return;
      // A certificate either side refuses will not be accepted on a retry either.
      const tlsFailure = error === undefined ? undefined : tlsFailureError("the control plane", this.o.endpoint, error);
      if (error !== undefined && !this.everRegistered && (tlsFailure || isRefusal(error))) {
        const refusal = tlsFailure ?? toKilnError(error);
        this.rejectFirst(
          new Error(`the control plane at ${this.o.endpoint} refused this agent: ${refusal.message} (${refusal.code})`),
        );
        return;
      }
      failures = registered ? 1 : failures + 1;
      const delay = reconnectDelayMs(failures, this.o.reconnectMaxDelayMs);
      const reason = error === undefined ? "the control plane ended the stream" : errorMessage(error);
      this.o.log(`control plane stream lost (${reason}); reconnecting in ${delay} ms`);
      await sleep(delay, undefined, { signal: this.wakeBackoff.signal }).catch(() => {});
    }
  }

  /** One connection, until it fails or ends. Never throws: says whether it got registered, and why it ended. */
  private async connectOnce(): Promise<{ registered: boolean; error?: unknown }> {
    const connection = createClusterTransport({
      endpoint: this.o.endpoint,
      token: this.o.token,
      ...(this.o.tls ? { tls: this.o.tls } : {}),
      pingIntervalMs: PING_INTERVAL_MS,
      pingTimeoutMs: PING_TIMEOUT_MS,
    });
    const abort = new AbortController();
    this.current = abort;
    let registered = false;
    let heartbeat: NodeJS.Timeout | undefined;
    const registerTimer = setTimeout(
      () => abort.abort(new Error(`no Registered within ${REGISTER_TIMEOUT_MS} ms`)),
      REGISTER_TIMEOUT_MS,
    );
    try {
      const client = createClient(kiln.Agent, connection.transport);
      for await (const message of client.connect(this.requests(abort.signal), { signal: abort.signal })) {
        if (message.kind.case === "registered") {
          clearTimeout(registerTimer);
          const r = message.kind.value;
          this.o.onRegistered(r);
          clearInterval(heartbeat);
          heartbeat = setInterval(() => this.o.outbox.heartbeat(), r.heartbeatIntervalMs || this.o.heartbeatIntervalMs);
          heartbeat.unref();
          registered = this.everRegistered = true;
          this.o.outbox.openFor(abort.signal);
          this.resolveFirst(r);
        } else if (message.kind.case === "completionsAck") {
          this.o.outbox.acknowledged(message.kind.value.throughSeq);
        } else if (registered) {
          this.o.onMessage(message);
        }
      }
      return { registered };
    } catch (error) {
      return { registered, error };
    } finally {
      clearTimeout(registerTimer);
      clearInterval(heartbeat);
      abort.abort();
      connection.close();
    }
  }

  private async *requests(signal: AbortSignal): AsyncGenerator<kiln.AgentMessage> {
    yield create(kiln.AgentMessageSchema, { kind: { case: "register", value: this.o.register() } });
    for (;;) {
      const message = await this.o.outbox.next(signal);
      if (!message) return;
      yield message;
    }
  }
}
