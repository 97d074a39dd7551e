import { createHash, type Hash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";

/**
 * The lower-case hex sha256 of `data`.
 *
 * @example
 * sha256Hex("abc") // "ba7816bf…"
 */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * Passes bytes through unchanged while hashing and counting them: how
 * uploads, downloads and packing learn a stream's digest without a second read.
 *
 * @example
 * const counter = new Sha256Counter();
 * await pipeline(fs.createReadStream(file), counter, out);
 * console.log(counter.digest(), counter.bytes);
 */
export class Sha256Counter extends Transform {
  private readonly hash: Hash = createHash("sha256");
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    callback(null, chunk);
  }

  /** The hex digest; call once, after the stream ended. */
  digest(): string {
    return this.hash.digest("hex");
  }
}
