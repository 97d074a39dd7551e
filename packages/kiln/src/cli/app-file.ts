import type { ApplicationInit } from "@kiln/sdk";
import { validateName } from "@kiln/protocol";
import { parseAllDocuments } from "yaml";
import { UsageError } from "./exit-codes.js";

/** One application from an application file. */
export interface ApplicationDocument {
  name: string;
  init: ApplicationInit;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const SPEC_FIELDS = [
  "shim",
  "description",
  "labels",
  "image",
  "command",
  "arguments",
  "environments",
  "working_directory",
  "max_instances",
  "delay_release",
  "schema",
  "url",
  "installer",
] as const;
const SCHEMA_FIELDS = ["input", "output", "common_data"] as const;

function isRecord(v: Json | undefined): v is { [key: string]: Json } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Reads one document's fields, turning every mistake into a UsageError that names the document and the field. */
class DocumentReader {
  constructor(private readonly index: number) {}

  fail(field: string, rule: string): never {
    throw new UsageError(`document ${this.index}: ${field}: ${rule}`);
  }

  string(field: string, v: Json | undefined): string | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") this.fail(field, `must be a string (got ${describe(v)})`);
    return v;
  }

  /** Strings, and numbers/booleans written without quotes (`value: 8080`), as text. */
  scalar(field: string, v: Json): string {
    if (typeof v === "string") return v;
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    return this.fail(field, `must be a string (got ${describe(v)})`);
  }

  strings(field: string, v: Json | undefined): string[] | undefined {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) this.fail(field, `must be a list of strings (got ${describe(v)})`);
    return v.map((item, i) => this.scalar(`${field}[${i}]`, item));
  }

  count(field: string, v: Json | undefined): number | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0)
      this.fail(field, `must be a whole number, 0 or more (got ${describe(v)})`);
    return v;
  }

  environments(field: string, v: Json | undefined): Record<string, string> | undefined {
    if (v === undefined || v === null) return undefined;
    const out: Record<string, string> = {};
    if (isRecord(v)) {
      for (const [name, value] of Object.entries(v)) out[name] = this.scalar(`${field}.${name}`, value);
      return out;
    }
    if (!Array.isArray(v))
      this.fail(field, `must be a map of NAME: value or a list of {name, value} (got ${describe(v)})`);
    v.forEach((item, i) => {
      if (!isRecord(item)) this.fail(`${field}[${i}]`, `must be {name, value} (got ${describe(item)})`);
      const name = this.string(`${field}[${i}].name`, item.name);
      if (!name) this.fail(`${field}[${i}].name`, "is required");
      out[name] =
        item.value === undefined || item.value === null ? "" : this.scalar(`${field}[${i}].value`, item.value);
    });
    return out;
  }

  shim(field: string, v: Json | undefined): "host" | "wasm" | undefined {
    const text = this.string(field, v)?.toLowerCase();
    if (text === undefined || text === "host" || text === "wasm") return text;
    return this.fail(field, `must be Host or Wasm (got "${String(v)}")`);
  }

  /** A JSON Schema given inline as YAML or as a JSON string; the API takes it as JSON text. */
  jsonSchema(field: string, v: Json | undefined): string | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v === "string") return v;
    if (typeof v === "object") return JSON.stringify(v);
    return this.fail(field, `must be a JSON Schema object or a JSON string (got ${describe(v)})`);
  }
}

function describe(v: Json): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a map";
  return `${typeof v} ${JSON.stringify(v)}`;
}

function toInit(doc: Json, index: number): ApplicationDocument {
  const r: DocumentReader = new DocumentReader(index);
  if (!isRecord(doc)) r.fail("document", `must be a map with metadata and spec (got ${describe(doc)})`);
  if (!isRecord(doc.metadata)) r.fail("metadata.name", "is required");
  const name = r.string("metadata.name", doc.metadata.name);
  if (!name) r.fail("metadata.name", "is required");
  try {
    validateName("metadata.name", name);
  } catch (e) {
    r.fail("metadata.name", (e as Error).message.replace(/^metadata\.name: /, ""));
  }
  const spec = doc.spec ?? {};
  if (!isRecord(spec)) r.fail("spec", `must be a map (got ${describe(spec)})`);
  for (const key of Object.keys(spec))
    if (!(SPEC_FIELDS as readonly string[]).includes(key))
      r.fail(`spec.${key}`, `unknown field (known: ${SPEC_FIELDS.join(", ")})`);

  const init: ApplicationInit = {};
  const set = <K extends keyof ApplicationInit>(key: K, value: ApplicationInit[K] | undefined): void => {
    if (value !== undefined) init[key] = value;
  };
  set("shim", r.shim("spec.shim", spec.shim));
  set("description", r.string("spec.description", spec.description));
  set("labels", r.strings("spec.labels", spec.labels));
  set("image", r.string("spec.image", spec.image));
  set("command", r.string("spec.command", spec.command));
  set("arguments", r.strings("spec.arguments", spec.arguments));
  set("environments", r.environments("spec.environments", spec.environments));
  set("workingDirectory", r.string("spec.working_directory", spec.working_directory));
  set("maxInstances", r.count("spec.max_instances", spec.max_instances));
  set("delayReleaseSeconds", r.count("spec.delay_release", spec.delay_release));
  set("url", r.string("spec.url", spec.url));
  set("installer", r.string("spec.installer", spec.installer));
  if (spec.schema !== undefined && spec.schema !== null) {
    if (!isRecord(spec.schema)) r.fail("spec.schema", `must be a map of input/output/common_data`);
    for (const key of Object.keys(spec.schema))
      if (!(SCHEMA_FIELDS as readonly string[]).includes(key))
        r.fail(`spec.schema.${key}`, `unknown field (known: ${SCHEMA_FIELDS.join(", ")})`);
    const schema: NonNullable<ApplicationInit["schema"]> = {};
    const input = r.jsonSchema("spec.schema.input", spec.schema.input);
    const output = r.jsonSchema("spec.schema.output", spec.schema.output);
    const commonData = r.jsonSchema("spec.schema.common_data", spec.schema.common_data);
    if (input !== undefined) schema.input = input;
    if (output !== undefined) schema.output = output;
    if (commonData !== undefined) schema.commonData = commonData;
    init.schema = schema;
  }
  return { name, init };
}

/**
 * Parses a Flame-format application file (one or more YAML documents separated by `---`).
 * Every document is checked before anything is returned, so a caller that registers the
 * result registers all of them or none. Documents are numbered from 1 in errors.
 *
 * @example
 * parseApplicationFile("metadata:\n  name: echo\nspec:\n  command: /bin/cat\n");
 * // [{ name: "echo", init: { command: "/bin/cat" } }]
 */
export function parseApplicationFile(text: string): ApplicationDocument[] {
  const docs = parseAllDocuments(text);
  const out: ApplicationDocument[] = [];
  const names = new Set<string>();
  let index = 0;
  for (const doc of docs) {
    index++;
    const problem = doc.errors[0];
    if (problem) throw new UsageError(`document ${index}: invalid YAML: ${problem.message.split("\n")[0]}`);
    let content: Json | undefined;
    try {
      content = doc.toJS({ maxAliasCount: 100 }) as Json | undefined;
    } catch (e) {
      throw new UsageError(`document ${index}: invalid YAML: ${(e as Error).message}`);
    }
    // An empty document (e.g. after a trailing `---`) carries nothing to register.
    if (content === null || content === undefined) continue;
    const app = toInit(content, index);
    if (names.has(app.name)) throw new UsageError(`document ${index}: metadata.name: "${app.name}" appears twice`);
    names.add(app.name);
    out.push(app);
  }
  if (out.length === 0) throw new UsageError("the file defines no applications");
  return out;
}
