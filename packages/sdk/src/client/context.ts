import type { CallOptions, Client } from "@connectrpc/connect";
import { ErrorCode, KilnError, tlsFailureError, tokenRefusedError, toKilnError } from "@kiln/protocol";
import type { flame as flameProto, kiln as kilnProto } from "@kiln/protocol/proto";
import { speaksTls } from "@kiln/protocol/transport";
import { TaskSubmitter } from "./task-submitter.js";

/** Something that holds a stream open and must stop when the client closes. */
export interface Stoppable {
  stop(reason: KilnError): void;
}

/**
 * What a Session needs from its KilnClient. Kept out of the public class so
 * the client's surface stays the documented one.
 */
export class ClientContext {
  private closedReason: KilnError | undefined;
  private readonly active = new Set<Stoppable>();
  /** Task creation for run()/invoke(), shared by all sessions of the client. */
  readonly submitter = new TaskSubmitter(this);

  constructor(
    readonly flame: Client<typeof flameProto.Frontend>,
    readonly kiln: Client<typeof kilnProto.Frontend>,
    /** Options for unary calls (their time bound). */
    readonly unary: CallOptions,
    /** The cluster's endpoint, named in errors that are about where the client points. */
    private readonly endpoint: string,
    /** How long run()/invoke() keep trying through a lost connection (see ConnectOptions.patienceMs). */
    readonly patienceMs: number,
  ) {}

  /** Set once the client is closed: the error every later call fails with. */
  get closedError(): KilnError | undefined {
    return this.closedReason;
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  ensureOpen(): void {
    if (this.closedReason) throw this.closedReason;
  }

  /** Any failure as a KilnError; after close, every failure is the close itself. */
  toError(err: unknown): KilnError {
    if (this.closedReason) return this.closedReason;
    const tlsFailure = tlsFailureError("the cluster", this.endpoint, err);
    if (tlsFailure) return tlsFailure;
    const error = toKilnError(err);
    if (error.code === ErrorCode.Unauthenticated) return tokenRefusedError("the cluster", this.endpoint, error);
    error.endpoint ??= this.endpoint;
    return error;
  }

  /** Runs one RPC with errors mapped to KilnError. */
  async call<T>(rpc: (options: CallOptions) => Promise<T>): Promise<T> {
    this.ensureOpen();
    try {
      return await rpc(this.unary);
    } catch (e) {
      const error = this.toError(e);
      throw (await this.cleartextAtTls(error)) ?? error;
    }
  }

  /**
   * When an `http://` call failed the way HTTP/2 fails against a TLS server
   * (its alert read as frames), and a TLS handshake there succeeds, the
   * error that says so; else undefined.
   */
  private async cleartextAtTls(error: KilnError): Promise<KilnError | undefined> {
    const url = new URL(this.endpoint);
    const garbled: string[] = [ErrorCode.Cancelled, ErrorCode.Internal, ErrorCode.Unavailable];
    if (url.protocol !== "http:" || this.closed || !garbled.includes(error.code)) return undefined;
    if (!(await speaksTls(url))) return undefined;
    const tlsError = new KilnError(
      ErrorCode.FailedPrecondition,
      `the cluster at ${this.endpoint} speaks TLS: use https://${url.host} ` +
        `(and tlsCa, KILN_TLS_CA or --tls-ca with the CA that signed its certificate)`,
      { cause: error },
    );
    tlsError.endpoint = this.endpoint;
    return tlsError;
  }

  track(s: Stoppable): void {
    this.active.add(s);
  }

  untrack(s: Stoppable): void {
    this.active.delete(s);
  }

  close(): void {
    if (this.closedReason) return;
    const reason = new KilnError(ErrorCode.Cancelled, "the Kiln client is closed");
    this.closedReason = reason;
    for (const s of [...this.active]) s.stop(reason);
    this.active.clear();
  }
}

const contexts = new WeakMap<object, ClientContext>();

export function bindContext(client: object, context: ClientContext): void {
  contexts.set(client, context);
}

export function contextOf(client: object): ClientContext {
  const context = contexts.get(client);
  if (!context) throw new KilnError(ErrorCode.Internal, "not a client made by connect()");
  return context;
}
