import { create, isMessage, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { encodeEnvelope } from "@connectrpc/connect/protocol";

/** The five-byte prefix of every gRPC message: a flags byte and a big-endian length. */
const PREFIX_BYTES = 5;
const FLAG_COMPRESSED = 0b1;

/**
 * One message as it goes on a gRPC stream: uncompressed, behind its prefix.
 * Handlers and callers may give a message or just its fields.
 *
 * @example
 * stream.write(envelope(kiln.InvokeRequestSchema, { tasks }));
 */
export function envelope<S extends DescMessage>(schema: S, message: MessageInitShape<S>): Uint8Array {
  return encodeEnvelope(0, toBinary(schema, isMessage(message, schema) ? message : create(schema, message)));
}

/**
 * Splits the bytes of a gRPC stream into its messages, however the chunks
 * fall. A message longer than `maxBytes` is refused before it is buffered.
 *
 * @example
 * const reader = new EnvelopeReader(4 * 1024 * 1024);
 * stream.on("data", (chunk) => { for (const m of reader.push(chunk)) handle(m); });
 */
export class EnvelopeReader {
  // Chunks of an unfinished message are kept apart and joined once, when it is complete:
  // joining on every chunk would copy a large message once per chunk.
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Prefix + length of the message being collected, once its prefix has arrived. */
  private needed = 0;

  constructor(private readonly maxBytes: number) {}

  /** The complete messages `chunk` finishes, in order; throws ConnectError on a frame this side cannot read. */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const messages: Buffer[] = [];
    for (;;) {
      if (this.needed === 0) {
        if (this.buffered < PREFIX_BYTES) break;
        this.needed = PREFIX_BYTES + this.readLength();
      }
      if (this.buffered < this.needed) break;
      const buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
      messages.push(buf.subarray(PREFIX_BYTES, this.needed));
      const rest = buf.subarray(this.needed);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
      this.needed = 0;
    }
    return messages;
  }

  /** True while part of a message is waiting for more bytes (a stream that ends now was cut short). */
  get partial(): boolean {
    return this.buffered > 0;
  }

  private readLength(): number {
    let prefix = this.chunks[0]!;
    if (prefix.length < PREFIX_BYTES) {
      prefix = Buffer.concat(this.chunks, this.buffered);
      this.chunks = [prefix];
    }
    if (prefix[0]! & FLAG_COMPRESSED)
      throw new ConnectError("received a compressed message, but no compression was negotiated", Code.Internal);
    const length = prefix.readUInt32BE(1);
    if (length > this.maxBytes)
      throw new ConnectError(
        `message size ${length} is larger than configured readMaxBytes ${this.maxBytes}`,
        Code.ResourceExhausted,
      );
    return length;
  }
}
