import { constants } from "node:buffer";
import { CodecError } from "./errors.js";

const SCRATCH_SIZE = 64 * 1024;
/** Strings shorter than this are tried as ASCII in JS: cheaper than a native call for short keys. */
const SHORT_STRING = 48;

let scratch: Buffer | undefined = Buffer.allocUnsafeSlow(SCRATCH_SIZE);

// Node 20 has String.prototype.isWellFormed; the ES2023 lib typings do not.
const { isWellFormed } = String.prototype as unknown as { isWellFormed: (this: string) => boolean };

/**
 * A growable little-endian byte buffer. Small encodings reuse one module-wide
 * scratch buffer and are copied out; a writer that outgrows it owns its buffer.
 */
export class ByteWriter {
  private buf: Buffer;
  private view: DataView;
  private pos = 0;
  private readonly borrowed: Buffer | undefined;

  constructor() {
    // A getter on an encoded object may itself call encodeValue: the nested writer must not share the scratch.
    this.borrowed = scratch;
    scratch = undefined;
    this.buf = this.borrowed ?? Buffer.allocUnsafeSlow(SCRATCH_SIZE);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  /** Returns the bytes written; the writer must not be used afterwards. */
  finish(): Uint8Array {
    const { buf, pos } = this;
    this.release();
    // A mostly-full buffer of our own is kept as is rather than copying a large result.
    if (buf !== this.borrowed && pos >= buf.length / 2) return buf.subarray(0, pos);
    const out = Buffer.allocUnsafe(pos);
    buf.copy(out, 0, 0, pos);
    return out;
  }

  /** Gives the scratch buffer back; call when an encoding fails. */
  release(): void {
    if (this.borrowed) scratch = this.borrowed;
  }

  private ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.grow(n);
  }

  private grow(n: number): void {
    const needed = this.pos + n;
    if (needed > constants.MAX_LENGTH)
      throw new CodecError(
        "value",
        `encodes to more than ${constants.MAX_LENGTH} bytes, the largest Buffer Node allows`,
      );
    const next = Buffer.allocUnsafeSlow(Math.min(Math.max(this.buf.length * 2, needed), constants.MAX_LENGTH));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
    this.view = new DataView(next.buffer, next.byteOffset, next.byteLength);
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  /** Unsigned LEB128 of a safe integer >= 0. */
  varint(n: number): void {
    this.ensure(8);
    const buf = this.buf;
    let pos = this.pos;
    while (n >= 0x80) {
      buf[pos++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    buf[pos++] = n;
    this.pos = pos;
  }

  /** A tag byte then a float64. */
  taggedFloat64(tag: number, n: number): void {
    this.ensure(9);
    this.buf[this.pos] = tag;
    this.view.setFloat64(this.pos + 1, n, true);
    this.pos += 9;
  }

  /** A tag byte then an unsigned varint below 2^32. */
  taggedVarint32(tag: number, n: number): void {
    this.ensure(6);
    const buf = this.buf;
    let pos = this.pos;
    buf[pos++] = tag;
    while (n >= 0x80) {
      buf[pos++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    buf[pos++] = n;
    this.pos = pos;
  }

  bytes(src: Uint8Array): void {
    this.ensure(src.length);
    this.buf.set(src, this.pos);
    this.pos += src.length;
  }

  /** A string body: varint (length << 1 | utf16) then the units; UTF-16 only for strings with lone surrogates. */
  string(s: string): void {
    const n = s.length;
    if (n < SHORT_STRING && this.asciiString(s, n)) return;
    if (isWellFormed.call(s)) {
      const len = Buffer.byteLength(s, "utf8");
      this.varint(len * 2);
      this.ensure(len);
      this.pos += this.buf.write(s, this.pos, len, "utf8");
    } else {
      this.varint(n * 2 + 1);
      this.ensure(n * 2);
      this.pos += this.buf.write(s, this.pos, n * 2, "utf16le");
    }
  }

  private asciiString(s: string, n: number): boolean {
    this.ensure(n + 1);
    const buf = this.buf;
    let pos = this.pos + 1;
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) return false;
      buf[pos++] = c;
    }
    buf[this.pos] = n * 2;
    this.pos = pos;
    return true;
  }
}
