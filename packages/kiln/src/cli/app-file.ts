import type { ApplicationInit } from "@kiln/sdk";
import { validateName } from "@kiln/protocol";
import * as path from "node:path";
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

/**
 * Reads one document's fields. A mistake is recorded (naming the document and the field) and
 * reading goes on, so one pass finds every problem in the file. A field with a mistake reads as
 * undefined or is left out; such partial values never leave the parser, which throws when any
 * problem was recorded.
 */
class DocumentReader {
  constructor(
    private readonly index: number,
    private readonly problems: string[],
  ) {}

  fail(field: string, rule: string): undefined {
    this.problems.push(`document ${this.index}: ${field}: ${rule}`);
    return undefined;
  }

  string(field: string, v: Json | undefined): string | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") return this.fail(field, `must be a string (got ${describe(v)})`);
    return v;
  }

  /** Strings, and numbers/booleans written without quotes (`value: 8080`), as text. */
  scalar(field: string, v: Json): string | undefined {
    if (typeof v === "string") return v;
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    return this.fail(field, `must be a string (got ${describe(v)})`);
  }

  strings(field: string, v: Json | undefined): string[] | undefined {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) return this.fail(field, `must be a list of strings (got ${describe(v)})`);
    return v.flatMap((item, i) => this.scalar(`${field}[${i}]`, item) ?? []);
  }

  count(field: string, v: Json | undefined): number | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0)
      return this.fail(field, `must be a whole number, 0 or more (got ${describe(v)})`);
    return v;
  }

  /** The directory the service starts in, on the node: an absolute path, as the control plane requires. */
  absolutePath(field: string, v: Json | undefined): string | undefined {
    const text = this.string(field, v);
    if (text === undefined || text === "" || path.posix.isAbsolute(text)) return text;
    return this.fail(field, `must be an absolute path (got "${text}")`);
  }

  environments(field: string, v: Json | undefined): Record<string, string> | undefined {
    if (v === undefined || v === null) return undefined;
    const out: Record<string, string> = {};
    if (isRecord(v)) {
      for (const [name, value] of Object.entries(v)) out[name] = this.scalar(`${field}.${name}`, value) ?? "";
      return out;
    }
    if (!Array.isArray(v))
      return this.fail(field, `must be a map of NAME: value or a list of {name, value} (got ${describe(v)})`);
    v.forEach((item, i) => {
      if (!isRecord(item)) {
        this.fail(`${field}[${i}]`, `must be {name, value} (got ${describe(item)})`);
        return;
      }
      const name = this.string(`${field}[${i}].name`, item.name);
      // A name that is not a string was reported just now.
      if (name === undefined && item.name !== undefined && item.name !== null) return;
      if (!name) {
        this.fail(`${field}[${i}].name`, "is required");
        return;
      }
      out[name] =
        item.value === undefined || item.value === null ? "" : (this.scalar(`${field}[${i}].value`, item.value) ?? "");
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

  /** Every key of `map` that is not in `known`, as an unknown-field problem. */
  knownFields(prefix: string, map: { [key: string]: Json }, known: readonly string[]): void {
    for (const key of Object.keys(map))
      if (!known.includes(key)) this.fail(`${prefix}.${key}`, `unknown field (known: ${known.join(", ")})`);
  }
}

function describe(v: Json): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a map";
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** One document as an application, or undefined when it has a problem (recorded in `r`). */
function toInit(doc: Json, r: DocumentReader): ApplicationDocument | undefined {
  if (!isRecord(doc)) return r.fail("document", `must be a map with metadata and spec (got ${describe(doc)})`);
  const name = applicationName(doc.metadata, r);
  const spec = doc.spec ?? {};
  if (!isRecord(spec)) return r.fail("spec", `must be a map (got ${describe(spec)})`);
  r.knownFields("spec", spec, SPEC_FIELDS);

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
  set("workingDirectory", r.absolutePath("spec.working_directory", spec.working_directory));
  set("maxInstances", r.count("spec.max_instances", spec.max_instances));
  set("delayReleaseSeconds", r.count("spec.delay_release", spec.delay_release));
  set("url", r.string("spec.url", spec.url));
  set("installer", r.string("spec.installer", spec.installer));
  set("schema", schemaOf(spec.schema, r));
  return name === undefined ? undefined : { name, init };
}

function applicationName(metadata: Json | undefined, r: DocumentReader): string | undefined {
  if (!isRecord(metadata)) return r.fail("metadata.name", "is required");
  const name = r.string("metadata.name", metadata.name);
  // A name that is not a string was reported just now.
  if (name === undefined && metadata.name !== undefined && metadata.name !== null) return undefined;
  if (!name) return r.fail("metadata.name", "is required");
  try {
    return validateName("metadata.name", name);
  } catch (e) {
    return r.fail("metadata.name", (e as Error).message.replace(/^metadata\.name: /, ""));
  }
}

function schemaOf(v: Json | undefined, r: DocumentReader): ApplicationInit["schema"] {
  if (v === undefined || v === null) return undefined;
  if (!isRecord(v)) return r.fail("spec.schema", "must be a map of input/output/common_data");
  r.knownFields("spec.schema", v, SCHEMA_FIELDS);
  const schema: NonNullable<ApplicationInit["schema"]> = {};
  const input = r.jsonSchema("spec.schema.input", v.input);
  const output = r.jsonSchema("spec.schema.output", v.output);
  const commonData = r.jsonSchema("spec.schema.common_data", v.common_data);
  if (input !== undefined) schema.input = input;
  if (output !== undefined) schema.output = output;
  if (commonData !== undefined) schema.commonData = commonData;
  return schema;
}

/**
 * Everything wrong with an application file, one problem per entry
 * (`document 2: spec.max_instances: must be a whole number…`), document by document.
 */
export class ApplicationFileError extends UsageError {
  constructor(readonly problems: readonly string[]) {
    super(problems.join("\n"));
    this.name = "ApplicationFileError";
  }
}

/**
 * Parses a Flame-format application file (one or more YAML documents separated by `---`).
 * Every document is checked before anything is returned, so a caller that registers the
 * result registers all of them or none; an ApplicationFileError lists every problem found,
 * each with its document (numbered from 1) and field.
 *
 * @example
 * parseApplicationFile("metadata:\n  name: echo\nspec:\n  command: /bin/cat\n");
 * // [{ name: "echo", init: { command: "/bin/cat" } }]
 */
export function parseApplicationFile(text: string): ApplicationDocument[] {
  const problems: string[] = [];
  const out: ApplicationDocument[] = [];
  const names = new Set<string>();
  let index = 0;
  for (const doc of parseAllDocuments(text)) {
    index++;
    // YAML errors after the first in a document are mostly its echoes; the first says where.
    const yamlProblem = doc.errors[0];
    if (yamlProblem) {
      problems.push(`document ${index}: invalid YAML: ${yamlProblem.message.split("\n")[0]!.replace(/:$/, "")}`);
      continue;
    }
    let content: Json | undefined;
    try {
      content = doc.toJS({ maxAliasCount: 100 }) as Json | undefined;
    } catch (e) {
      problems.push(`document ${index}: invalid YAML: ${(e as Error).message}`);
      continue;
    }
    // An empty document (e.g. after a trailing `---`) carries nothing to register.
    if (content === null || content === undefined) continue;
    const app = toInit(content, new DocumentReader(index, problems));
    if (!app) continue;
    if (names.has(app.name)) problems.push(`document ${index}: metadata.name: "${app.name}" appears twice`);
    names.add(app.name);
    out.push(app);
  }
  if (problems.length > 0) throw new ApplicationFileError(problems);
  if (out.length === 0) throw new UsageError("the file defines no applications");
  return out;
}
