import type { ObjectCache } from "../objects/cache-client.js";
import type { ObjectRef } from "@kiln/protocol";
import { runnerKeys, type CapturedOutput, type OutputRecord } from "@kiln/protocol/runner";

/** How a call ended: its output record (also for a remote throw, absent when nothing ran), and the error when it failed. */
export type CallOutcome = { ok: true; record: OutputRecord } | { ok: false; record?: OutputRecord; error: Error };

/** What a future needs besides its outcome: where results live and what to name objects it puts. */
export interface FutureContext {
  cache: ObjectCache;
  application: string;
  sessionId: string;
}

/**
 * The result of a remote call, available once the call ends. Await it (or
 * `.get()`) for the value, `.ref()` for an ObjectRef to it, `.output()` for
 * what the call printed. Pass it to another remote call as an argument and
 * only its reference travels (or the value itself when it is small); a large
 * result is never downloaded to do so.
 *
 * @example
 * const a = square(3);            // ObjectFuture<number>, nothing awaited yet
 * const b = add(a, 1);            // a's result goes to the executor by reference
 * console.log(await b, (await b.output()).stdout);
 */
export class ObjectFuture<T> implements PromiseLike<T> {
  /** The session of the call. */
  readonly sessionId: string;
  #taskId: string | undefined;
  readonly #context: FutureContext;
  readonly #outcome: Promise<CallOutcome>;
  #value: Promise<T> | undefined;
  #ref: Promise<ObjectRef> | undefined;

  /**
   * Made by remote calls: `start` runs the call, reports the task id once the
   * cluster names it, and resolves with the outcome (it must never reject).
   */
  constructor(context: FutureContext, start: (onTaskId: (taskId: string) => void) => Promise<CallOutcome>) {
    this.#context = context;
    this.sessionId = context.sessionId;
    this.#outcome = start((taskId) => (this.#taskId ??= taskId));
  }

  /** The task's id, once the task exists. */
  get taskId(): string | undefined {
    return this.#taskId;
  }

  /**
   * The result; rejects with the remote error (same name, message and remote
   * stack, plus `taskId`/`sessionId`) or with TaskFailedError when the task
   * failed without one (e.g. its service could not start).
   *
   * @example
   * const value = await future.get();
   */
  get(): Promise<T> {
    return (this.#value ??= this.#outcome.then(async (outcome) => {
      if (!outcome.ok) throw outcome.error;
      const { record } = outcome;
      if (record.resultRef) return this.#context.cache.getObject<T>(record.resultRef);
      return record.result as T;
    }));
  }

  then<R1 = T, R2 = never>(
    onfulfilled?: ((value: T) => R1 | PromiseLike<R1>) | null,
    onrejected?: ((reason: unknown) => R2 | PromiseLike<R2>) | null,
  ): Promise<R1 | R2> {
    return this.get().then(onfulfilled, onrejected);
  }

  /** As a promise's `catch`: the value, or what `onrejected` makes of the error. */
  catch<R = never>(onrejected?: ((reason: unknown) => R | PromiseLike<R>) | null): Promise<T | R> {
    return this.get().catch(onrejected);
  }

  /** As a promise's `finally`. */
  finally(onfinally?: (() => void) | null): Promise<T> {
    return this.get().finally(onfinally);
  }

  /**
   * An ObjectRef to the result. A large result already is in the cache; a
   * small one is put there now (once), under the call's session.
   *
   * @example
   * const ref = await future.ref(); // share it: getObject(ref) anywhere on the cluster
   */
  ref(): Promise<ObjectRef> {
    return (this.#ref ??= this.#outcome.then((outcome) => {
      if (!outcome.ok) throw outcome.error;
      const { record } = outcome;
      if (record.resultRef) return record.resultRef;
      const { cache, application, sessionId } = this.#context;
      return cache.putObject(runnerKeys.session(application, sessionId), record.result);
    }));
  }

  /**
   * What the call wrote to stdout and stderr (console included), bounded per
   * stream; also for a call that threw. Rejects when the task ended without
   * running the call.
   *
   * @example
   * const { stdout, stderr } = await future.output();
   */
  async output(): Promise<CapturedOutput> {
    const outcome = await this.#outcome;
    if (outcome.ok) return capturedOutput(outcome.record);
    if (outcome.record) return capturedOutput(outcome.record);
    throw outcome.error;
  }

  /**
   * Resolves once the call has ended, whether it succeeded or failed; fetches nothing.
   *
   * @example
   * await future.wait(); const ok = await future.get().then(() => true, () => false);
   */
  async wait(): Promise<void> {
    await this.#outcome;
  }

  /**
   * @internal What stands for this result in another call's arguments: the
   * ObjectRef of a result in the cache, else the (small) value itself.
   */
  async argument(): Promise<unknown> {
    const outcome = await this.#outcome;
    if (!outcome.ok) throw outcome.error;
    return outcome.record.resultRef ?? outcome.record.result;
  }
}

function capturedOutput({ stdout, stderr, stdoutTruncated, stderrTruncated }: OutputRecord): CapturedOutput {
  return { stdout, stderr, stdoutTruncated, stderrTruncated };
}
