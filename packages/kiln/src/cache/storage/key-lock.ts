/**
 * Serializes the writers of one key (a patch hashes from the version it
 * started on, so nothing may replace that version meanwhile); writers of
 * different keys never wait for each other.
 *
 * @example
 * const release = await locks.acquire("app/s1/state");
 * try { ... } finally { release(); }
 */
export class KeyLock {
  private readonly tails = new Map<string, Promise<void>>();

  async acquire(key: string): Promise<() => void> {
    const previous = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous ? previous.then(() => mine) : mine;
    this.tails.set(key, tail);
    if (previous) await previous;
    return () => {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }
}
