/**
 * An abort switch whose AbortSignal is made only when someone asks for it.
 * Nearly every task finishes without being cancelled and without its code
 * looking at the signal, and an AbortController (an EventTarget) per task was
 * a measurable share of the task hot path on both the agent and the service.
 *
 * @example
 * const abort = new LazyAbort();
 * abort.onAbort(() => console.log("cancelled"));
 * abort.abort(); // logs once; abort.signal is already aborted when first read
 */
export class LazyAbort {
  private controller: AbortController | undefined;
  private listeners: (() => void)[] | undefined;
  private done = false;

  get aborted(): boolean {
    return this.done;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.done) this.controller.abort();
    }
    return this.controller.signal;
  }

  /** Runs `listener` once, at the first `abort()` (at once if that already happened). */
  onAbort(listener: () => void): void {
    if (this.done) listener();
    else (this.listeners ??= []).push(listener);
  }

  abort(): void {
    if (this.done) return;
    this.done = true;
    this.controller?.abort();
    const listeners = this.listeners;
    this.listeners = undefined;
    for (const listener of listeners ?? []) listener();
  }
}
