export declare function square(n: number): number;
export declare function add(a: number, b: number): number;
/** A value too large to travel inside a task: it goes through the object cache. */
export declare function blob(bytes: number, seed: number): Uint8Array;
export declare function sha256(data: Uint8Array): string;
export declare function shout(text: string): string;
export declare function encodedSize(value: unknown): number;
export declare class CheckError extends Error {
  code: string;
}
export declare function fail(message: string): never;
/** Stateful: `total` is saved after each call and restored before the next, on any executor. */
export declare class Tally {
  total: number;
  constructor(start: number);
  add(n: number): number;
}
//# sourceMappingURL=check.d.ts.map
