import { InvalidArgumentError } from "../errors.js";
import { isObjectRef, ObjectRef } from "../objects/object-ref.js";
import { decodeValue } from "./decode.js";
import { encodeValue } from "./encode.js";
import { CodecError } from "./errors.js";

/**
 * Encodes a ref with the value codec, for task inputs and common data that
 * carry a ref instead of the data.
 *
 * @example
 * const input = encodeObjectRef(ref); // Uint8Array, decode with decodeObjectRef
 */
export function encodeObjectRef(ref: ObjectRef): Uint8Array {
  if (!isObjectRef(ref)) throw new InvalidArgumentError("ref", "must be an ObjectRef (see ObjectRef.from)");
  return encodeValue(ref);
}

/**
 * Decodes bytes written by {@link encodeObjectRef}. Throws CodecError when the
 * bytes are not an encoded ObjectRef.
 *
 * @example
 * const ref = decodeObjectRef(task.input);
 */
export function decodeObjectRef(bytes: Uint8Array): ObjectRef {
  const value = decodeValue(bytes);
  if (!(value instanceof ObjectRef)) throw new CodecError("bytes", "do not hold an ObjectRef");
  return value;
}
