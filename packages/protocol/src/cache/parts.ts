import { createHash, type Hash } from "node:crypto";
import { InvalidArgumentError } from "../errors.js";

/**
 * The object cache's read format, shared by the server (writer) and the SDK
 * (reader) so there is one definition. An object with deltas is sent as
 * parts in version order; each part is a 12-byte header (u32 big-endian
 * version, u64 big-endian length) followed by that many bytes. The first
 * part is the base, then each delta.
 */

export const PART_HEADER_BYTES = 12;
export const PARTS_CONTENT_TYPE = "application/vnd.kiln.parts";

/** Header names of the cache HTTP API (lower case, as Node reports them). */
export const CacheHeader = {
  version: "kiln-version",
  sha256: "kiln-sha256",
  size: "kiln-size",
  /** `raw` (the base bytes) or `parts` (PARTS_CONTENT_TYPE). */
  format: "kiln-format",
  /** Request: the version the client holds, for an incremental read. */
  haveVersion: "kiln-have-version",
  /** Response: the body holds only the deltas after this version. */
  deltaFrom: "kiln-delta-from",
  /** Request: write only if the current version is this (0 = must not exist). */
  ifVersion: "kiln-if-version",
} as const;

const MAX_VERSION = 0xffff_ffff;
const TWO_32 = 2 ** 32;

/**
 * The 12-byte header that precedes a part's bytes.
 *
 * @example
 * socket.write(encodePartHeader(3, delta.length)); socket.write(delta);
 */
export function encodePartHeader(version: number, length: number): Uint8Array {
  if (!Number.isInteger(version) || version < 0 || version > MAX_VERSION)
    throw new InvalidArgumentError("version", `${version} does not fit a part header (u32)`);
  if (!Number.isSafeInteger(length) || length < 0)
    throw new InvalidArgumentError("length", `${length} is not a byte length`);
  const header = new Uint8Array(PART_HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint32(0, version);
  view.setUint32(4, Math.floor(length / TWO_32));
  view.setUint32(8, length % TWO_32);
  return header;
}

export interface Part {
  version: number;
  bytes: Uint8Array;
}

/**
 * Encodes whole parts into one buffer (for small objects and tests).
 *
 * @example
 * encodeParts([{ version: 1, bytes: base }, { version: 2, bytes: delta }])
 */
export function encodeParts(parts: Part[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + PART_HEADER_BYTES + p.bytes.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(encodePartHeader(p.version, p.bytes.length), offset);
    out.set(p.bytes, offset + PART_HEADER_BYTES);
    offset += PART_HEADER_BYTES + p.bytes.length;
  }
  return out;
}

/** Receives a decoded parts stream: `part` announces each part, `data` delivers its bytes in order. */
export interface PartsSink {
  part(version: number, length: number): void;
  data(bytes: Uint8Array): void;
}

/**
 * Streaming decoder: feed it response chunks of any size, it calls the sink
 * as headers and bytes arrive, never holding more than one header. `end()`
 * throws if the stream stopped inside a header or a part.
 *
 * @example
 * const dec = new PartsDecoder({ part: (v, n) => console.log(v, n), data: (b) => file.write(b) });
 * for await (const chunk of response.body) dec.push(chunk);
 * dec.end();
 */
export class PartsDecoder {
  private readonly header = new Uint8Array(PART_HEADER_BYTES);
  private headerFill = 0;
  private remaining = 0;

  constructor(private readonly sink: PartsSink) {}

  push(chunk: Uint8Array): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, chunk.length - offset);
        this.remaining -= n;
        this.sink.data(chunk.subarray(offset, offset + n));
        offset += n;
        continue;
      }
      const n = Math.min(PART_HEADER_BYTES - this.headerFill, chunk.length - offset);
      this.header.set(chunk.subarray(offset, offset + n), this.headerFill);
      this.headerFill += n;
      offset += n;
      if (this.headerFill === PART_HEADER_BYTES) this.startPart();
    }
  }

  end(): void {
    if (this.headerFill > 0) throw new InvalidArgumentError("parts", "stream ends inside a part header");
    if (this.remaining > 0)
      throw new InvalidArgumentError("parts", `stream ends ${this.remaining} bytes before a part's end`);
  }

  private startPart(): void {
    const view = new DataView(this.header.buffer);
    const high = view.getUint32(4);
    if (high >= 2 ** 21) throw new InvalidArgumentError("parts", "part length exceeds 2^53 bytes");
    this.headerFill = 0;
    this.remaining = high * TWO_32 + view.getUint32(8);
    this.sink.part(view.getUint32(0), this.remaining);
  }
}

/**
 * Decodes a whole parts body held in memory.
 *
 * @example
 * const [base, ...deltas] = decodeParts(new Uint8Array(await res.arrayBuffer()));
 */
export function decodeParts(body: Uint8Array): Part[] {
  const parts: Part[] = [];
  let current: { version: number; bytes: Uint8Array; filled: number } | undefined;
  const decoder = new PartsDecoder({
    part(version, length) {
      if (length > body.length) throw new InvalidArgumentError("parts", `part ${version} claims ${length} bytes`);
      current = { version, bytes: new Uint8Array(length), filled: 0 };
      parts.push(current);
    },
    data(bytes) {
      current!.bytes.set(bytes, current!.filled);
      current!.filled += bytes.length;
    },
  });
  decoder.push(body);
  decoder.end();
  return parts.map(({ version, bytes }) => ({ version, bytes }));
}

/**
 * Starts the hash of an object's next version: sha_n = sha256(hexdecode(sha_{n-1}) ‖ delta_n).
 * A patch costs O(delta) to hash, and a reader that holds version n-1 can verify version n.
 *
 * @example
 * const next = chainSha256(ref.sha256).update(delta).digest("hex");
 */
export function chainSha256(previousSha256: string): Hash {
  return createHash("sha256").update(Buffer.from(previousSha256, "hex"));
}
