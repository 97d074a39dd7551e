import { FailedPreconditionError } from "@kiln/protocol";

/** Combines a decoded base with its decoded deltas, oldest first. */
export type MergeFunction<T> = (base: T, deltas: unknown[]) => T;

/**
 * What getObject does with an object that has deltas when no `merge` is
 * given: an array base gets each delta appended (an array delta is spread,
 * anything else pushed); a string base gets string deltas concatenated; a
 * Map base gets each Map delta's entries set; a plain-object base gets each
 * plain-object delta shallow-assigned. Anything else throws
 * FailedPreconditionError asking for `merge`.
 *
 * @example
 * defaultMerge("app/s1/log", [1], [[2, 3], 4])      // [1, 2, 3, 4]
 * defaultMerge("app/s1/conf", { a: 1 }, [{ b: 2 }]) // { a: 1, b: 2 }
 */
export function defaultMerge(key: string, base: unknown, deltas: unknown[]): unknown {
  if (Array.isArray(base)) {
    for (const delta of deltas) {
      // Element by element: spreading a large delta into push() would overflow the argument limit.
      if (Array.isArray(delta)) for (const item of delta) base.push(item);
      else base.push(delta);
    }
    return base;
  }
  if (typeof base === "string") {
    let text = base;
    for (const delta of deltas) {
      expect(key, "a string", typeof delta === "string", delta);
      text += delta as string;
    }
    return text;
  }
  if (base instanceof Map) {
    for (const delta of deltas) {
      expect(key, "a Map", delta instanceof Map, delta);
      for (const [k, v] of delta as Map<unknown, unknown>) base.set(k, v);
    }
    return base;
  }
  if (isPlainObject(base)) {
    for (const delta of deltas) {
      expect(key, "a plain object", isPlainObject(delta), delta);
      Object.assign(base, delta);
    }
    return base;
  }
  throw new FailedPreconditionError(
    `object ${key} has deltas and a base of type ${describe(base)}, which has no default merge; ` +
      "pass getObject(ref, { merge: (base, deltas) => ... })",
  );
}

function expect(key: string, wanted: string, ok: boolean, delta: unknown): void {
  if (!ok)
    throw new FailedPreconditionError(
      `object ${key}: a delta of type ${describe(delta)} cannot be merged into a base that is ${wanted} by default; ` +
        "pass getObject(ref, { merge: (base, deltas) => ... })",
    );
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return (value as object).constructor?.name ?? "object";
}
