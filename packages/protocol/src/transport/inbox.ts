import { AsyncQueue } from "../async-queue.js";

/** Something that can stop and restart delivering data (a Node stream). */
export interface Pausable {
  pause(): void;
  resume(): void;
}

// Past this many unread messages the source stops reading, so HTTP/2 flow control slows the sender.
const PAUSE_AT = 64;

/**
 * The messages read from one side of a stream, waiting for their consumer.
 * Reading pauses while too many wait, so a slow consumer holds back the
 * peer instead of filling memory.
 *
 * @example
 * const inbox = new Inbox<Msg>(req, () => req.destroy());
 * req.on("data", (chunk) => inbox.push(decode(chunk)));
 * for await (const m of inbox) handle(m);
 */
export class Inbox<T> implements AsyncIterable<T> {
  private readonly queue = new AsyncQueue<T>();
  private paused = false;

  /** `onReturn` runs when the consumer stops reading before the end. */
  constructor(
    private readonly source: Pausable,
    private readonly onReturn: () => void,
  ) {}

  push(message: T): void {
    this.queue.push(message);
    if (!this.paused && this.queue.size >= PAUSE_AT) {
      this.paused = true;
      this.source.pause();
    }
  }

  end(): void {
    this.queue.end();
  }

  fail(err: unknown): void {
    this.queue.fail(err);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    const it = this.queue[Symbol.asyncIterator]();
    return {
      next: () => {
        if (this.paused && this.queue.size < PAUSE_AT / 2) {
          this.paused = false;
          this.source.resume();
        }
        return it.next();
      },
      return: () => {
        this.onReturn();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** Resolves once `stream` can take more writes, or has closed. */
export function drained(stream: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}
