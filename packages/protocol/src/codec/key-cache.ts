import { decodeUtf8 } from "./utf8.js";

const SLOTS = 4096;
/** Longer keys are rare enough that decoding them directly costs less than hashing and comparing. */
const MAX_CACHED_KEY_BYTES = 32;

interface Slot {
  bytes: Uint8Array;
  key: string;
}

const slots: (Slot | undefined)[] = new Array<Slot | undefined>(SLOTS);

/**
 * Decodes an object key, `buf[start, end)` as UTF-8. Keys repeat across the
 * objects of one value and across values, and V8 must internalize a string
 * before using it as a property name; handing back the same string for the
 * same bytes lets it do that once, which makes decoding objects several times
 * faster. Bounded: a fixed number of slots of at most 32 bytes each, shared
 * by all decodes (a key is plain data, so sharing leaks nothing executable).
 */
export function decodeKey(buf: Buffer, start: number, end: number): string {
  const length = end - start;
  if (length > MAX_CACHED_KEY_BYTES) return decodeUtf8(buf, start, end);
  let h = length;
  for (let i = start; i < end; i++) h = Math.imul(h ^ buf[i]!, 0x01000193);
  const index = (h ^ (h >>> 15)) & (SLOTS - 1);
  const slot = slots[index];
  if (slot !== undefined && slot.bytes.length === length) {
    const cached = slot.bytes;
    let i = 0;
    while (i < length && cached[i] === buf[start + i]) i++;
    if (i === length) return slot.key;
  }
  const key = decodeUtf8(buf, start, end);
  slots[index] = { bytes: buf.slice(start, end), key };
  return key;
}
