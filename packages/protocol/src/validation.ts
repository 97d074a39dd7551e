import { InvalidArgumentError } from "./errors.js";

const NAME_CHARS = /^[A-Za-z0-9._-]+$/;

/**
 * The token rule shared by application names, session ids and (later) cache
 * key components: 1–253 chars of [A-Za-z0-9._-], no leading "." or "-", no "..".
 * Throws InvalidArgumentError naming `field` and the broken rule.
 */
export function validateName(field: string, value: string): string {
  if (value.length === 0) throw new InvalidArgumentError(field, "must not be empty");
  if (value.length > 253) throw new InvalidArgumentError(field, `must be at most 253 characters (got ${value.length})`);
  if (!NAME_CHARS.test(value)) throw new InvalidArgumentError(field, `"${value}" may only contain [A-Za-z0-9._-]`);
  if (value.startsWith(".") || value.startsWith("-"))
    throw new InvalidArgumentError(field, `"${value}" must not start with "." or "-"`);
  if (value.includes("..")) throw new InvalidArgumentError(field, `"${value}" must not contain ".."`);
  return value;
}

export interface Resources {
  /** Cores. */
  cpu: number;
  /** Bytes. */
  memory: number;
  gpu: number;
}

const UNITS: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

/** Parses a byte size like `2g`, `512Mi`, `1GiB`, `1024` (binary units). */
export function parseBytes(field: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$/i.exec(text.trim());
  if (!m) throw new InvalidArgumentError(field, `"${text}" is not a size (examples: 512m, 2g, 1Gi, 1048576)`);
  const value = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(Math.round(value))) throw new InvalidArgumentError(field, `"${text}" is too large`);
  return Math.round(value);
}

/** A resource request as typed: a resource left out takes the cluster default. */
export type ResourceRequest = Partial<Resources>;

/**
 * Parses a resource request such as `cpu=1,mem=2g,gpu=0`. Keys: cpu, mem
 * (or memory), gpu; each at most once; sizes use binary units. Only the keys
 * given are set, so the cluster default fills the rest (`gpu=1` keeps the
 * default cpu and memory).
 *
 * @example
 * parseResreq("cpu=2,mem=1g") // { cpu: 2, memory: 1073741824 }
 */
export function parseResreq(text: string, field = "resreq"): ResourceRequest {
  const out: ResourceRequest = {};
  const seen = new Set<string>();
  if (text.trim() === "") throw new InvalidArgumentError(field, "must not be empty (example: cpu=1,mem=2g,gpu=0)");
  for (const part of text.split(",")) {
    const [rawKey, rawValue, ...rest] = part.split("=");
    const key = rawKey?.trim().toLowerCase() ?? "";
    const value = rawValue?.trim() ?? "";
    if (rest.length > 0 || value === "")
      throw new InvalidArgumentError(field, `"${part}" must be key=value (example: cpu=1,mem=2g,gpu=0)`);
    const canonical = key === "memory" ? "mem" : key;
    if (seen.has(canonical)) throw new InvalidArgumentError(field, `"${canonical}" is given twice`);
    seen.add(canonical);
    switch (canonical) {
      case "cpu":
      case "gpu": {
        if (!/^\d+$/.test(value))
          throw new InvalidArgumentError(`${field}.${canonical}`, `"${value}" must be a whole number`);
        out[canonical] = Number(value);
        break;
      }
      case "mem":
        out.memory = parseBytes(`${field}.mem`, value);
        break;
      default:
        throw new InvalidArgumentError(field, `unknown resource "${key}" (known: cpu, mem, gpu)`);
    }
  }
  return out;
}

/** Formats resources the way `kiln list -s` shows them: `cpu=1,mem=1Gi,gpu=0`. */
export function formatResreq(r: { cpu: number | bigint; memory: number | bigint; gpu: number }): string {
  return `cpu=${r.cpu},mem=${formatBytes(Number(r.memory))},gpu=${r.gpu}`;
}

const BINARY_UNITS = [
  ["Pi", 2 ** 50],
  ["Ti", 2 ** 40],
  ["Gi", 2 ** 30],
  ["Mi", 2 ** 20],
  ["Ki", 2 ** 10],
] as const;

/** Formats a byte count with the largest exact binary unit (`1Gi`, `512Mi`, `1536Ki`). */
export function formatBytes(bytes: number): string {
  for (const [suffix, size] of BINARY_UNITS) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${suffix}`;
  }
  return String(bytes);
}

/**
 * A machine's memory for people: exact binary units when they fit, else one decimal.
 *
 * @example
 * formatMemory(8 * 2 ** 30)       // "8Gi"
 * formatMemory(25_275_805_696)    // "23.5Gi"
 */
export function formatMemory(bytes: number | bigint): string {
  const n = Number(bytes);
  for (const [suffix, size] of BINARY_UNITS) {
    if (n < size) continue;
    return n % size === 0 ? `${n / size}${suffix}` : `${(n / size).toFixed(1)}${suffix}`;
  }
  return String(n);
}
