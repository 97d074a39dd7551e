/**
 * Kiln value format, version 1. Every encoding starts with the format version
 * byte, then one value: a tag byte and its payload. Integers in headers are
 * unsigned LEB128 varints (at most 2^53 - 1); fixed-width numbers are
 * little-endian. docs/codec.md describes every tag.
 */
export const FORMAT_VERSION = 1;

export const Tag = {
  Undefined: 0x00,
  Null: 0x01,
  False: 0x02,
  True: 0x03,
  /** zig-zag varint of an int32 (not -0). */
  Int: 0x04,
  /** float64. */
  Float: 0x05,
  /** string body: varint (length << 1 | utf16), then UTF-8 bytes or UTF-16LE code units. */
  String: 0x06,
  /** sign byte (0 or 1), varint byte count, magnitude little-endian. */
  BigInt: 0x07,
  /** float64 milliseconds since the epoch (NaN for an invalid date). */
  Date: 0x08,
  /** varint count, values; holes come back as undefined. */
  Array: 0x09,
  /** varint count, then string body and value per own enumerable string key. */
  Object: 0x0a,
  /** varint count, key and value per entry. */
  Map: 0x0b,
  /** varint count, values. */
  Set: 0x0c,
  /** kind byte (TypedArrayKind), varint byte length, bytes. */
  TypedArray: 0x0d,
  /** varint byte length, bytes; decodes to a Node Buffer. */
  Buffer: 0x0e,
  ArrayBuffer: 0x0f,
  DataView: 0x10,
  /** name, message (string bodies), stack flag (+ string body), cause flag (+ value), then properties as in Object. */
  Error: 0x11,
  /** endpoint and key (string bodies), varint version, varint size, 32 bytes sha256. */
  ObjectRef: 0x12,
  /** varint index of an object already seen in this encoding (first-seen order): shared references and cycles. */
  Ref: 0x13,
} as const;

/** Typed array constructors by their kind byte; never extended from the bytes. */
export const TYPED_ARRAY_KINDS = [
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
] as const;

/** Nesting deeper than this is refused on both sides, so anything encodable decodes without exhausting the stack. */
export const MAX_DEPTH = 1000;
