import { TimeoutError } from "./errors.js";

/**
 * `work`'s outcome, or a TimeoutError naming `what` when `ms` pass first.
 * The timer is cleared either way, so it never keeps a process alive.
 *
 * @example
 * await withTimeout(runner.get(futures), 60_000, "the first results");
 */
export function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
