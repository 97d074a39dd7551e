import { InvalidArgumentError } from "../errors.js";
import { ObjectRef } from "../objects/object-ref.js";
import { CodecError } from "./errors.js";
import { FORMAT_VERSION, MAX_DEPTH, Tag, TYPED_ARRAY_KINDS } from "./format.js";
import { decodeKey } from "./key-cache.js";
import { decodeUtf8 } from "./utf8.js";

/** A fixed table, not a lookup on globalThis: names in the bytes never choose what code runs. */
const ERROR_CONSTRUCTORS = new Map<string, new (message: string) => Error>([
  ["Error", Error],
  ["TypeError", TypeError],
  ["RangeError", RangeError],
  ["SyntaxError", SyntaxError],
  ["ReferenceError", ReferenceError],
  ["EvalError", EvalError],
  ["URIError", URIError],
]);
/** V8 refuses BigInts over 2^30 bits; refuse them here first, with a CodecError. */
const MAX_BIGINT_BYTES = 2 ** 27;

const corrupt = (rule: string) => new CodecError("bytes", rule);

function defineData(target: object, key: string, value: unknown, enumerable: boolean): void {
  Object.defineProperty(target, key, { value, writable: true, enumerable, configurable: true });
}

class Decoder {
  private readonly buf: Buffer;
  private readonly view: DataView;
  pos: number;
  private readonly end: number;
  /** Objects in first-seen order, the targets of Tag.Ref. */
  private readonly objects: unknown[] = [];
  private depth = 0;

  constructor(bytes: Uint8Array, start: number) {
    this.buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = start;
    this.end = bytes.byteLength;
  }

  /** Numbers and strings stay in this small function so the JIT can inline it into the container loops. */
  value(): unknown {
    if (this.pos >= this.end) throw corrupt(`truncated: value expected at offset ${this.pos}`);
    const tag = this.buf[this.pos]!;
    if (tag === Tag.Float) {
      this.pos++;
      return this.float64();
    }
    if (tag === Tag.Int) {
      this.pos++;
      return this.int32();
    }
    if (tag === Tag.String) {
      this.pos++;
      return this.string();
    }
    return this.otherValue();
  }

  private int32(): number {
    const at = this.pos;
    const z = this.varint();
    if (z > 0xffffffff) throw corrupt(`integer out of range at offset ${at}`);
    return (z >>> 1) ^ -(z & 1);
  }

  /** Every tag but the three value() handles itself. */
  private otherValue(): unknown {
    const at = this.pos;
    const tag = this.u8();
    switch (tag) {
      case Tag.Undefined:
        return undefined;
      case Tag.Null:
        return null;
      case Tag.False:
        return false;
      case Tag.True:
        return true;
      case Tag.BigInt:
        return this.bigint(at);
      case Tag.Date:
        return this.keep(new Date(this.float64()));
      case Tag.Array:
        return this.array();
      case Tag.Object:
        return this.plainObject();
      case Tag.Map:
        return this.map();
      case Tag.Set:
        return this.set();
      case Tag.TypedArray:
        return this.typedArray(at);
      case Tag.Buffer:
        return this.keep(this.copy(this.varint()));
      case Tag.ArrayBuffer:
        return this.keep(this.copy(this.varint()).buffer);
      case Tag.DataView:
        return this.keep(new DataView(this.copy(this.varint()).buffer));
      case Tag.Error:
        return this.error();
      case Tag.ObjectRef:
        return this.objectRef(at);
      case Tag.Ref: {
        const index = this.varint();
        if (index >= this.objects.length) throw corrupt(`reference to unknown object ${index} at offset ${at}`);
        return this.objects[index];
      }
      default:
        throw corrupt(`unknown tag 0x${tag.toString(16).padStart(2, "0")} at offset ${at}`);
    }
  }

  private keep<T>(object: T): T {
    this.objects.push(object);
    return object;
  }

  private enter(): void {
    if (++this.depth > MAX_DEPTH) throw corrupt(`nesting deeper than ${MAX_DEPTH} levels at offset ${this.pos}`);
  }

  /** A count of items that each take at least `minBytes`: a claim past the end is refused before any allocation. */
  private count(minBytes: number, what: string): number {
    const at = this.pos;
    const n = this.varint();
    if (n * minBytes > this.end - this.pos)
      throw corrupt(`${what} of ${n} items at offset ${at} is longer than the ${this.end - this.pos} bytes left`);
    return n;
  }

  private need(n: number, what: string): void {
    if (n > this.end - this.pos)
      throw corrupt(`truncated: ${what} at offset ${this.pos} needs ${n} bytes, ${this.end - this.pos} left`);
  }

  private u8(): number {
    if (this.pos >= this.end) throw corrupt(`truncated: value expected at offset ${this.pos}`);
    return this.buf[this.pos++]!;
  }

  private flag(): boolean {
    const at = this.pos;
    const b = this.u8();
    if (b > 1) throw corrupt(`flag byte must be 0 or 1 at offset ${at}`);
    return b === 1;
  }

  private varint(): number {
    const at = this.pos;
    let b = this.u8();
    if (b < 0x80) return b;
    let n = b & 0x7f;
    let scale = 0x80;
    for (let i = 1; ; i++) {
      b = this.u8();
      n += (b & 0x7f) * scale;
      if (b < 0x80) break;
      if (i === 7) throw corrupt(`varint longer than 8 bytes at offset ${at}`);
      scale *= 0x80;
    }
    if (n > Number.MAX_SAFE_INTEGER) throw corrupt(`varint above 2^53 at offset ${at}`);
    return n;
  }

  private float64(): number {
    this.need(8, "a float64");
    const n = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return n;
  }

  /** A fresh copy in its own ArrayBuffer (aligned for any typed array): the result must not alias the input. */
  private copy(length: number): Buffer<ArrayBuffer> {
    this.need(length, "a byte string");
    const out = Buffer.allocUnsafeSlow(length);
    this.buf.copy(out, 0, this.pos, this.pos + length);
    this.pos += length;
    return out;
  }

  /** A string body; `key` strings go through the key cache. */
  string(key = false): string {
    const header = this.varint();
    const units = Math.floor(header / 2);
    const start = this.pos;
    if (header % 2 === 1) {
      this.need(units * 2, "a UTF-16 string");
      this.pos += units * 2;
      return this.buf.toString("utf16le", start, this.pos);
    }
    this.need(units, "a UTF-8 string");
    this.pos += units;
    return key ? decodeKey(this.buf, start, this.pos) : decodeUtf8(this.buf, start, this.pos);
  }

  private bigint(at: number): bigint {
    const negative = this.flag();
    const length = this.varint();
    if (length > MAX_BIGINT_BYTES) throw corrupt(`BigInt of ${length} bytes at offset ${at} is too large`);
    this.need(length, "a BigInt");
    const magnitude = length === 0 ? 0n : BigInt(`0x${this.buf.toString("hex", this.pos, this.pos + length)}`);
    this.pos += length;
    return negative ? -magnitude : magnitude;
  }

  private array(): unknown[] {
    this.enter();
    const n = this.count(1, "an array");
    const out = this.keep(new Array<unknown>(n));
    for (let i = 0; i < n; i++) out[i] = this.value();
    this.depth--;
    return out;
  }

  private plainObject(): object {
    this.enter();
    const out = this.keep({});
    this.properties(out);
    this.depth--;
    return out;
  }

  /** Own data properties; `__proto__` is defined, never assigned, so it cannot replace the prototype. */
  private properties(target: object): void {
    const record = target as Record<string, unknown>;
    const n = this.count(2, "an object");
    for (let i = 0; i < n; i++) {
      const key = this.string(true);
      const value = this.value();
      if (key === "__proto__") defineData(target, key, value, true);
      else record[key] = value;
    }
  }

  private map(): Map<unknown, unknown> {
    this.enter();
    const n = this.count(2, "a map");
    const out = this.keep(new Map<unknown, unknown>());
    for (let i = 0; i < n; i++) {
      const key = this.value();
      out.set(key, this.value());
    }
    this.depth--;
    return out;
  }

  private set(): Set<unknown> {
    this.enter();
    const n = this.count(1, "a set");
    const out = this.keep(new Set<unknown>());
    for (let i = 0; i < n; i++) out.add(this.value());
    this.depth--;
    return out;
  }

  private typedArray(at: number): ArrayBufferView {
    const kind = this.u8();
    const ctor = TYPED_ARRAY_KINDS[kind];
    if (!ctor) throw corrupt(`unknown typed array kind ${kind} at offset ${at}`);
    const length = this.varint();
    if (length % ctor.BYTES_PER_ELEMENT !== 0)
      throw corrupt(`${ctor.name} of ${length} bytes at offset ${at} is not a whole number of elements`);
    return this.keep(new ctor(this.copy(length).buffer));
  }

  private error(): Error {
    this.enter();
    const name = this.string();
    const message = this.string();
    const known = ERROR_CONSTRUCTORS.get(name);
    const out = this.keep(new (known ?? Error)(message));
    if (!known) defineData(out, "name", name, false);
    if (this.flag()) defineData(out, "stack", this.string(), false);
    else delete out.stack;
    if (this.flag()) defineData(out, "cause", this.value(), false);
    this.properties(out);
    this.depth--;
    return out;
  }

  private objectRef(at: number): ObjectRef {
    const endpoint = this.string();
    const key = this.string();
    const version = this.varint();
    const size = this.varint();
    this.need(32, "an ObjectRef sha256");
    const sha256 = this.buf.toString("hex", this.pos, this.pos + 32);
    this.pos += 32;
    try {
      return this.keep(ObjectRef.from({ endpoint, key, version, size, sha256 }));
    } catch (e) {
      if (e instanceof InvalidArgumentError) throw corrupt(`invalid ObjectRef at offset ${at}: ${e.message}`);
      throw e;
    }
  }
}

/**
 * Decodes bytes written by {@link encodeValue}. Never runs code from the
 * bytes (no eval, no constructor chosen by name, no setter triggered) and
 * allocates at most a small multiple of the input's size. Bytes that are not a
 * valid encoding throw CodecError (field `bytes`), including an unknown
 * format version.
 *
 * @example
 * const value = decodeValue(encodeValue(new Map([["a", 1n]]))); // Map { "a" => 1n }
 */
export function decodeValue(bytes: Uint8Array): unknown {
  if (!(bytes instanceof Uint8Array)) throw new CodecError("bytes", "must be a Uint8Array");
  if (bytes.length === 0) throw corrupt("are empty (expected a format version byte)");
  const version = bytes[0];
  if (version !== FORMAT_VERSION)
    throw corrupt(
      `are in codec format version ${version}, but this Kiln reads version ${FORMAT_VERSION} ` +
        "(written by a newer Kiln, or not Kiln-encoded data)",
    );
  const decoder = new Decoder(bytes, 1);
  const value = decoder.value();
  if (decoder.pos !== bytes.length)
    throw corrupt(`${bytes.length - decoder.pos} trailing bytes after the value at offset ${decoder.pos}`);
  return value;
}
