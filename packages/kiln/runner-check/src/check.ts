import { createHash } from "node:crypto";
// Imported by package name: the executor must provide the SDK without anything being published.
import { encodeValue } from "@kiln/protocol";

export function square(n: number): number {
  return n * n;
}

export function add(a: number, b: number): number {
  return a + b;
}

/** A value too large to travel inside a task: it goes through the object cache. */
export function blob(bytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export function shout(text: string): string {
  console.log(`shouting ${text}`);
  return text.toUpperCase();
}

export function encodedSize(value: unknown): number {
  return encodeValue(value).byteLength;
}

export class CheckError extends Error {
  code = "E_CHECK";
}

export function fail(message: string): never {
  const err = new CheckError(message);
  err.name = "CheckError";
  throw err;
}

/** Stateful: `total` is saved after each call and restored before the next, on any executor. */
export class Tally {
  total: number;
  constructor(start: number) {
    this.total = start;
  }
  add(n: number): number {
    this.total += n;
    return this.total;
  }
}
