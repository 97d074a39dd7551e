import { create, toJson, type DescMessage, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";

/**
 * A message as protobuf JSON (lowerCamel field names, int64 as strings, bytes as base64),
 * built from `init` with its generated schema.
 *
 * @example
 * messageJson(flame.SessionListSchema, { sessions }) // { sessions: [...] }
 */
export function messageJson<Desc extends DescMessage>(schema: Desc, init: MessageInitShape<Desc>): JsonValue {
  return toJson(schema, create(schema, init));
}

/** Prints one JSON value, indented, on stdout. */
export function printJson(value: JsonValue | Record<string, JsonValue>): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

/** One JSON value on one line (`-w -o json` prints one per state). */
export function jsonLine(value: JsonValue | Record<string, JsonValue>): string {
  return JSON.stringify(value) + "\n";
}
