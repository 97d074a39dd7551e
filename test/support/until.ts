import type { EventEmitter } from "node:events";
import * as fs from "node:fs";

/**
 * Resolves with the first value of `check` that is neither undefined nor false: checked at once, then
 * again each time `changes` emits "change" (an fs.watch watcher, or an emitter the test feeds from a
 * callback), so the wait ends when the thing happens, not at the next poll. Fails after `ms`, naming `what`.
 *
 * @example
 * await untilChanged(recorder, () => reports.find((r) => r.event === BOUND), 10_000, "the bind");
 */
export function untilChanged<T>(
  changes: EventEmitter,
  check: () => T | undefined | false,
  ms: number,
  what: string | (() => string),
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const evaluate = (): void => {
      let value: T | undefined | false;
      try {
        value = check();
      } catch (err) {
        finish();
        return reject(err);
      }
      if (value === undefined || value === false) return;
      finish();
      resolve(value);
    };
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`timed out after ${ms} ms waiting for ${typeof what === "string" ? what : what()}`));
    }, ms);
    const finish = (): void => {
      clearTimeout(timer);
      changes.off("change", evaluate);
    };
    changes.on("change", evaluate);
    evaluate();
  });
}

/**
 * `untilChanged` on a directory: `check` runs again whenever an entry of `dir` is created, removed
 * or written (fs.watch), e.g. for a temp file to be gone or a log line to appear.
 */
export async function untilDirChanges<T>(
  dir: string,
  check: () => T | undefined | false,
  ms: number,
  what: string | (() => string),
): Promise<T> {
  // Watching before the first check, so a change between the two is not missed.
  const watcher = fs.watch(dir);
  let failure: Error | undefined;
  watcher.on("error", (err) => {
    failure = err;
    watcher.emit("change");
  });
  try {
    return await untilChanged(
      watcher,
      () => {
        if (failure) throw failure;
        return check();
      },
      ms,
      what,
    );
  } finally {
    watcher.close();
  }
}

/** A promise with its resolve function at hand (Promise.withResolvers, which Node 20 lacks), for a callback to report through. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}
