/**
 * One output stream (a job's command, a Runner call), bounded: keeps the
 * first `limit` bytes and counts the rest, and, when asked, the last
 * `tailBytes` bytes (what a failure message quotes, even when the middle was
 * cut). Chunks are kept as bytes and decoded once, so a character split
 * across writes stays whole.
 *
 * @example
 * const out = new BoundedBytes(64 * 1024, 4096);
 * child.stdout.on("data", (chunk: Buffer) => out.add(chunk));
 * console.log(out.text(), out.truncated);
 */
export class BoundedBytes {
  private readonly head: Buffer[] = [];
  private kept = 0;
  private last = Buffer.alloc(0);
  /** Bytes that did not fit in the first `limit`. */
  truncated = 0;

  constructor(
    private readonly limit: number,
    private readonly tailBytes = 0,
  ) {}

  add(chunk: Buffer): void {
    const room = this.limit - this.kept;
    if (room > 0) {
      const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
      this.head.push(part);
      this.kept += part.length;
    }
    this.truncated += Math.max(0, chunk.length - Math.max(room, 0));
    if (this.tailBytes === 0) return;
    // A chunk at least as long as the tail replaces it without copying everything seen so far.
    if (chunk.length >= this.tailBytes) this.last = Buffer.from(chunk.subarray(chunk.length - this.tailBytes));
    else {
      const joined = Buffer.concat([this.last, chunk]);
      this.last = joined.subarray(Math.max(0, joined.length - this.tailBytes));
    }
  }

  /** The kept beginning, as UTF-8 text. */
  text(): string {
    return Buffer.concat(this.head).toString("utf8");
  }

  /** The last `lines` lines of everything written (at most `tailBytes` of it). */
  tail(lines: number): string {
    const text = this.last.toString("utf8").trimEnd();
    return text.split("\n").slice(-lines).join("\n");
  }
}
