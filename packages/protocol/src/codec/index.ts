export { encodeValue, type EncodeOptions } from "./encode.js";
export { decodeValue } from "./decode.js";
export { CodecError } from "./errors.js";
export { FORMAT_VERSION as CODEC_FORMAT_VERSION } from "./format.js";
export { encodeObjectRef, decodeObjectRef } from "./object-ref-bytes.js";
