import { hostname } from "node:os";

/** One turn of the conversation, as the caller sees it. */
export interface Reply {
  text: string;
  turn: number;
  /** The executor process that answered: it changes, the history does not. */
  pid: number;
  host: string;
}

/**
 * A toy conversation agent. Its own fields are its state: run as a stateful
 * Kiln service, they are saved to the object cache after every call and
 * restored before the next, on whichever executor takes it.
 */
export class Conversation {
  history: string[] = [];

  constructor(private readonly persona: string) {}

  say(message: string): Reply {
    this.history.push(message);
    const earlier = this.history.length > 1 ? ` Earlier you said "${this.history.at(-2)}".` : "";
    const text = `${this.persona} heard "${message}".${earlier}`;
    return { text, turn: this.history.length, pid: process.pid, host: hostname() };
  }

  transcript(): string[] {
    return [...this.history];
  }
}
