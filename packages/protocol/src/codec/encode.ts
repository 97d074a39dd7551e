import { types } from "node:util";
import { InvalidArgumentError } from "../errors.js";
import { isObjectRef, ObjectRef } from "../objects/object-ref.js";
import { CodecError } from "./errors.js";
import { FORMAT_VERSION, MAX_DEPTH, Tag, TYPED_ARRAY_KINDS } from "./format.js";
import { ByteWriter } from "./writer.js";

export interface EncodeOptions {
  /** What to call the value in error messages (default `value`), e.g. `args` gives `args[1].handler: …`. */
  path?: string;
}

/**
 * Thrown inside the encoder; each container on the way out adds its path
 * segment, so the happy path pays nothing for error paths.
 */
class Unsupported {
  readonly segments: string[] = [];
  constructor(readonly rule: string) {}
}

function at(err: unknown, segment: string): unknown {
  if (err instanceof Unsupported) err.segments.push(segment);
  return err;
}

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;
const keySegment = (key: string) => (IDENTIFIER.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`);
const ERROR_FIELDS = new Set(["name", "message", "stack", "cause"]);
const TYPED_ARRAY_KIND = new Map<object, number>(TYPED_ARRAY_KINDS.map((ctor, kind) => [ctor.prototype, kind]));
const PATH_EDGE = 12;
const BUILT_IN_NAMES = new Set(["Object", "Array", "Map", "Set", "Date", "Error", "ArrayBuffer", "DataView"]);

function formatPath(root: string, reversed: string[]): string {
  const segments = reversed.reverse();
  if (segments.length <= PATH_EDGE * 2) return root + segments.join("");
  const hidden = segments.length - PATH_EDGE * 2;
  return `${root}${segments.slice(0, PATH_EDGE).join("")}…(${hidden} more)…${segments.slice(-PATH_EDGE).join("")}`;
}

function mapKeySegment(key: unknown, index: number): string {
  if (typeof key === "string") return `.get(${JSON.stringify(key)})`;
  if (typeof key === "number" || typeof key === "boolean") return `.get(${String(key)})`;
  return `.<value of map entry ${index}>`;
}

/** Why an object we do not encode is refused, in words a caller can act on. */
function refusal(value: object): string {
  if (types.isPromise(value)) return "promises cannot be encoded (await them first)";
  if (types.isWeakMap(value) || types.isWeakSet(value)) return "WeakMap and WeakSet cannot be encoded";
  if (types.isSharedArrayBuffer(value)) return "SharedArrayBuffer cannot be encoded (copy it into an ArrayBuffer)";
  if (types.isBoxedPrimitive(value)) return "boxed primitives (new String(…), new Number(…)) cannot be encoded";
  const ctor = (Object.getPrototypeOf(value) as { constructor?: { name?: unknown } }).constructor;
  const name = typeof ctor?.name === "string" && ctor.name !== "" ? ctor.name : "an anonymous class";
  if (BUILT_IN_NAMES.has(name))
    return `${name} from another realm (a vm context) cannot be encoded (structuredClone it into this realm first)`;
  return (
    `instances of ${name} cannot be encoded (supported: plain objects, arrays, Map, Set, Date, ` +
    "typed arrays, Buffer, ArrayBuffer, DataView, Error, ObjectRef)"
  );
}

class Encoder {
  /** Every object seen so far, by first-seen index: shared references and cycles are written as Tag.Ref. */
  private readonly seen = new Map<object, number>();
  private depth = 0;

  constructor(private readonly out: ByteWriter) {}

  value(v: unknown): void {
    switch (typeof v) {
      case "number":
        return this.number(v);
      case "string":
        this.out.byte(Tag.String);
        return this.out.string(v);
      case "boolean":
        return this.out.byte(v ? Tag.True : Tag.False);
      case "undefined":
        return this.out.byte(Tag.Undefined);
      case "bigint":
        return this.bigint(v);
      case "object":
        return v === null ? this.out.byte(Tag.Null) : this.object(v);
      case "function":
        throw new Unsupported("functions cannot be encoded");
      case "symbol":
        throw new Unsupported("symbols cannot be encoded");
    }
  }

  private number(n: number): void {
    if ((n | 0) === n && (n !== 0 || 1 / n > 0)) this.out.taggedVarint32(Tag.Int, ((n << 1) ^ (n >> 31)) >>> 0);
    else this.out.taggedFloat64(Tag.Float, n);
  }

  private bigint(n: bigint): void {
    const negative = n < 0n;
    const hex = (negative ? -n : n).toString(16);
    const magnitude = n === 0n ? new Uint8Array(0) : Buffer.from(hex.length % 2 ? `0${hex}` : hex, "hex");
    this.out.byte(Tag.BigInt);
    this.out.byte(negative ? 1 : 0);
    this.out.varint(magnitude.length);
    this.out.bytes(magnitude);
  }

  private object(v: object): void {
    const index = this.seen.get(v);
    if (index !== undefined) {
      this.out.byte(Tag.Ref);
      this.out.varint(index);
      return;
    }
    this.seen.set(v, this.seen.size);
    const proto: unknown = Object.getPrototypeOf(v);
    if (proto === Object.prototype || proto === null) return this.plainObject(v);
    if (proto === Array.prototype) return this.array(v as unknown[]);
    if (proto === Map.prototype) return this.map(v as Map<unknown, unknown>);
    if (proto === Set.prototype) return this.set(v as Set<unknown>);
    if (proto === Date.prototype) return this.out.taggedFloat64(Tag.Date, Date.prototype.getTime.call(v));
    if (proto === Buffer.prototype) return this.sized(Tag.Buffer, v as Buffer);
    if (proto === ObjectRef.prototype) return this.objectRef(v as ObjectRef);
    if (proto === ArrayBuffer.prototype) return this.sized(Tag.ArrayBuffer, new Uint8Array(v as ArrayBuffer));
    if (proto === DataView.prototype) return this.sized(Tag.DataView, bytesOf(v as DataView));
    const kind = TYPED_ARRAY_KIND.get(proto as object);
    if (kind !== undefined) {
      this.out.byte(Tag.TypedArray);
      this.out.byte(kind);
      return this.sized(undefined, bytesOf(v as ArrayBufferView));
    }
    if (v instanceof Error || types.isNativeError(v)) return this.error(v as Error);
    if (isObjectRef(v)) return this.objectRef(adoptObjectRef(v));
    throw new Unsupported(refusal(v));
  }

  /** Containers call enter() first and decrement depth when done; a failed encoding is abandoned whole. */
  private enter(): void {
    if (++this.depth > MAX_DEPTH) throw new Unsupported(`nesting deeper than ${MAX_DEPTH} levels cannot be encoded`);
  }

  private sized(tag: number | undefined, bytes: Uint8Array): void {
    if (tag !== undefined) this.out.byte(tag);
    this.out.varint(bytes.length);
    this.out.bytes(bytes);
  }

  private array(v: unknown[]): void {
    this.enter();
    const n = v.length;
    this.out.byte(Tag.Array);
    this.out.varint(n);
    for (let i = 0; i < n; i++) {
      try {
        this.value(v[i]);
      } catch (e) {
        throw at(e, `[${i}]`);
      }
    }
    this.depth--;
  }

  private plainObject(v: object): void {
    this.enter();
    this.out.byte(Tag.Object);
    this.properties(v, Object.keys(v));
    this.depth--;
  }

  private properties(v: object, keys: string[]): void {
    const record = v as Record<string, unknown>;
    this.out.varint(keys.length);
    for (const key of keys) {
      this.out.string(key);
      try {
        this.value(record[key]);
      } catch (e) {
        throw at(e, keySegment(key));
      }
    }
  }

  private map(v: Map<unknown, unknown>): void {
    this.enter();
    this.out.byte(Tag.Map);
    this.out.varint(v.size);
    let i = 0;
    for (const [key, value] of v) {
      try {
        this.value(key);
      } catch (e) {
        throw at(e, `.<key of map entry ${i}>`);
      }
      try {
        this.value(value);
      } catch (e) {
        throw at(e, mapKeySegment(key, i));
      }
      i++;
    }
    this.depth--;
  }

  private set(v: Set<unknown>): void {
    this.enter();
    this.out.byte(Tag.Set);
    this.out.varint(v.size);
    let i = 0;
    for (const item of v) {
      try {
        this.value(item);
      } catch (e) {
        throw at(e, `.<set item ${i}>`);
      }
      i++;
    }
    this.depth--;
  }

  private error(v: Error): void {
    this.enter();
    const { name, message, stack } = v;
    this.out.byte(Tag.Error);
    this.out.string(typeof name === "string" ? name : "Error");
    this.out.string(typeof message === "string" ? message : String(message));
    this.out.byte(typeof stack === "string" ? 1 : 0);
    if (typeof stack === "string") this.out.string(stack);
    const hasCause = Object.hasOwn(v, "cause");
    this.out.byte(hasCause ? 1 : 0);
    if (hasCause) {
      try {
        this.value(v.cause);
      } catch (e) {
        throw at(e, ".cause");
      }
    }
    const keys = Object.keys(v).filter((key) => !ERROR_FIELDS.has(key));
    // AggregateError keeps its list in a non-enumerable own property; carry it like the enumerable ones.
    if (v instanceof AggregateError && !keys.includes("errors")) keys.push("errors");
    this.properties(v, keys);
    this.depth--;
  }

  private objectRef(ref: ObjectRef): void {
    this.out.byte(Tag.ObjectRef);
    this.out.string(ref.endpoint);
    this.out.string(ref.key);
    this.out.varint(ref.version);
    this.out.varint(ref.size);
    this.out.bytes(Buffer.from(ref.sha256, "hex"));
  }
}

/** A ref made by another copy of the SDK, checked by this one before it is written. */
function adoptObjectRef(ref: ObjectRef): ObjectRef {
  try {
    return ObjectRef.from(ref);
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw new Unsupported(`is not a valid ObjectRef (${e.message})`);
    throw e;
  }
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * Encodes a value in Kiln's value format (first byte: format version).
 * Supports undefined, null, booleans, numbers, strings, BigInt, Date, arrays,
 * plain objects, Map, Set, typed arrays, Buffer, ArrayBuffer, DataView, Error
 * and ObjectRef, nested in any way, with shared references and cycles kept.
 * Anything else throws CodecError naming where it is.
 *
 * @example
 * const bytes = encodeValue({ when: new Date(), ids: new Set([1n, 2n]) });
 * encodeValue([1, () => 2], { path: "args" }) // throws CodecError "args[1]: functions cannot be encoded"
 */
export function encodeValue(value: unknown, options: EncodeOptions = {}): Uint8Array {
  const out = new ByteWriter();
  try {
    out.byte(FORMAT_VERSION);
    new Encoder(out).value(value);
  } catch (e) {
    out.release();
    if (e instanceof Unsupported) throw new CodecError(formatPath(options.path ?? "value", e.segments), e.rule);
    throw e;
  }
  return out.finish();
}
