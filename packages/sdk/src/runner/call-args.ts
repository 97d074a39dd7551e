import { encodeValue, isObjectRef, type ObjectRef } from "@kiln/protocol";
import { ObjectFuture } from "./object-future.js";
import { INLINE_LIMIT } from "@kiln/protocol/runner";

/** One argument, checked: sent as it is, put to the cache first (large, already encoded), or taken from another call. */
export type ArgSlot = { inline: unknown } | { large: Uint8Array } | { future: ObjectFuture<unknown> };

/**
 * Checks arguments before anything is sent: each one must encode (a
 * CodecError names the bad part, e.g. `args[1].handler`), and its size
 * decides whether it travels inside the task or through the cache.
 * Futures and ObjectRefs are not encoded here; they travel as references.
 *
 * @example
 * const slots = checkArgs([1, bigBuffer, future], "args"); // [{inline: 1}, {large: <its encoding>}, {future}]
 */
export function checkArgs(args: readonly unknown[], field: string): ArgSlot[] {
  return args.map((arg, i): ArgSlot => {
    if (arg instanceof ObjectFuture) return { future: arg as ObjectFuture<unknown> };
    if (isObjectRef(arg)) return { inline: arg };
    const encoded = encodeValue(arg, { path: `${field}[${i}]` });
    return encoded.byteLength > INLINE_LIMIT ? { large: encoded } : { inline: arg };
  });
}

/**
 * The arguments as they go into a CallRecord: large values' encodings put to
 * the cache (by `put`, in parallel) and replaced by their ObjectRef, futures replaced by
 * their result's reference or small value. Rejects with a future's error when
 * the call it depends on failed.
 *
 * @example
 * const args = await resolveArgs(slots, (encoded) => cache.putEncoded(`${app}/${sessionId}`, encoded));
 */
export function resolveArgs(
  slots: readonly ArgSlot[],
  put: (encoded: Uint8Array) => Promise<ObjectRef>,
): Promise<unknown[]> {
  return Promise.all(
    slots.map((slot) => {
      if ("future" in slot) return slot.future.argument();
      if ("large" in slot) return put(slot.large);
      return slot.inline;
    }),
  );
}
