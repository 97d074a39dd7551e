interface Flight {
  promise: Promise<unknown>;
  controller: AbortController;
  waiters: number;
}

const flights = new Map<string, Flight>();

/**
 * Runs `work` once for concurrent callers with the same key; later callers
 * join the run in progress. A settled run is forgotten, so a failure is not
 * remembered: the next call runs again. A caller whose `signal` aborts stops
 * waiting; the work itself is aborted only when every waiter has gone.
 *
 * @example
 * const release = await joinFlight(`release:${sha}`, signal, (s) => extract(file, s));
 */
export function joinFlight<T>(
  key: string,
  signal: AbortSignal | undefined,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  let flight = flights.get(key);
  if (!flight) {
    const controller = new AbortController();
    const started: Flight = { promise: Promise.resolve(), controller, waiters: 0 };
    started.promise = work(controller.signal).finally(() => {
      if (flights.get(key) === started) flights.delete(key);
    });
    // Every waiter may have left; the outcome then has nobody to report to.
    started.promise.catch(() => {});
    flights.set(key, started);
    flight = started;
  }
  return wait(flight, signal) as Promise<T>;
}

function wait(flight: Flight, signal: AbortSignal | undefined): Promise<unknown> {
  flight.waiters++;
  if (!signal) return flight.promise;
  return new Promise((resolve, reject) => {
    const leave = () => {
      if (--flight.waiters === 0) flight.controller.abort(signal.reason);
      reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
    };
    if (signal.aborted) return leave();
    signal.addEventListener("abort", leave, { once: true });
    flight.promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", leave));
  });
}
