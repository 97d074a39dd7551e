import { createHash } from "node:crypto";
// Imported by package name: the executor must provide the SDK without anything being published.
import { encodeValue } from "@kiln/sdk";
export function square(n) {
  return n * n;
}
export function add(a, b) {
  return a + b;
}
/** A value too large to travel inside a task: it goes through the object cache. */
export function blob(bytes, seed) {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}
export function sha256(data) {
  return createHash("sha256").update(data).digest("hex");
}
export function shout(text) {
  console.log(`shouting ${text}`);
  return text.toUpperCase();
}
export function encodedSize(value) {
  return encodeValue(value).byteLength;
}
export class CheckError extends Error {
  code = "E_CHECK";
}
export function fail(message) {
  const err = new CheckError(message);
  err.name = "CheckError";
  throw err;
}
/** Stateful: `total` is saved after each call and restored before the next, on any executor. */
export class Tally {
  total;
  constructor(start) {
    this.total = start;
  }
  add(n) {
    this.total += n;
    return this.total;
  }
}
//# sourceMappingURL=check.js.map
