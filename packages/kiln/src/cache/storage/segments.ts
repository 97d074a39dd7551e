import * as fs from "node:fs";
import type { SegmentBytes } from "./backend.js";

const FILE_CHUNK = 1 << 20;

/**
 * Bytes [offset, offset + length) of a segment as chunks; a file is
 * streamed with backpressure, never read whole.
 *
 * @example
 * for await (const chunk of readSegment(segment.bytes, 0, 1024)) res.write(chunk);
 */
export async function* readSegment(bytes: SegmentBytes, offset: number, length: number): AsyncGenerator<Buffer> {
  if (length === 0) return;
  if (bytes.kind === "memory") {
    yield bytes.data.subarray(offset, offset + length);
    return;
  }
  yield* fs.createReadStream(bytes.path, { start: offset, end: offset + length - 1, highWaterMark: FILE_CHUNK });
}

/** Total bytes of the parts a segment holds. */
export function segmentSize(lengths: number[]): number {
  let n = 0;
  for (const l of lengths) n += l;
  return n;
}
