import { create, isMessage } from "@bufbuild/protobuf";
import { randomInt } from "node:crypto";
import { InvalidArgumentError, parseResreq, validateName, type ResourceRequest } from "@kiln/protocol";
import { flame } from "@kiln/protocol/proto";

/** The friendly form of flame.ApplicationSpec. */
export interface ApplicationInit {
  command?: string;
  arguments?: string[];
  environments?: Record<string, string>;
  /** Absolute path on the executor. */
  workingDirectory?: string;
  description?: string;
  labels?: string[];
  image?: string;
  maxInstances?: number;
  /** How long an idle executor stays bound to a session. */
  delayReleaseSeconds?: number;
  /** Package to install before the service starts. */
  url?: string;
  installer?: string;
  shim?: "host" | "wasm";
  /** JSON Schemas (as text) for task input, output and the session's common data. */
  schema?: { input?: string; output?: string; commonData?: string };
}

/** What a session runs and with what resources. */
export interface SessionOptions {
  application: string;
  /** Default: `<application>-<6 random letters/digits>`. */
  id?: string;
  /** Given to every executor when it enters the session. */
  commonData?: Uint8Array | string;
  minInstances?: number;
  maxInstances?: number;
  /** Higher first. */
  priority?: number;
  /** `cpu=1,mem=2g,gpu=0`, or cores and bytes. Absent (or a resource left out of it): the cluster default. */
  resreq?: string | ResourceRequest;
}

const UINT32_MAX = 2 ** 32 - 1;
const ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const utf8 = new TextEncoder();

/** Task inputs and common data may be given as text (sent as UTF-8). */
export function toBytes(value: Uint8Array | string | undefined): Uint8Array {
  if (value === undefined) return new Uint8Array(0);
  return typeof value === "string" ? utf8.encode(value) : value;
}

/** A session id the way Flame SDKs make one: `<app>-<6 random [a-zA-Z0-9]>`. */
export function generateSessionId(application: string): string {
  let suffix = "";
  for (let i = 0; i < 6; i++) suffix += ID_CHARS[randomInt(ID_CHARS.length)];
  return `${application}-${suffix}`;
}

/** Accepts either form; a generated message passes through unchanged. */
export function toApplicationSpec(spec: ApplicationInit | flame.ApplicationSpec): flame.ApplicationSpec {
  if (isMessage(spec, flame.ApplicationSpecSchema)) return spec;
  const init = spec as ApplicationInit;
  if (init.shim !== undefined && init.shim !== "host" && init.shim !== "wasm")
    throw new InvalidArgumentError("shim", `"${String(init.shim)}" must be "host" or "wasm"`);
  return create(flame.ApplicationSpecSchema, {
    shim: init.shim === "wasm" ? flame.Shim.Wasm : flame.Shim.Host,
    description: init.description,
    labels: init.labels ?? [],
    image: init.image,
    command: init.command,
    arguments: init.arguments ?? [],
    environments: Object.entries(init.environments ?? {}).map(([name, value]) => ({ name, value })),
    workingDirectory: init.workingDirectory,
    maxInstances: optionalUint32("maxInstances", init.maxInstances),
    delayRelease:
      init.delayReleaseSeconds === undefined
        ? undefined
        : BigInt(wholeNumber("delayReleaseSeconds", init.delayReleaseSeconds, Number.MAX_SAFE_INTEGER)),
    schema: init.schema && {
      input: init.schema.input,
      output: init.schema.output,
      commonData: init.schema.commonData,
    },
    url: init.url,
    installer: init.installer,
  });
}

/** Checks the options client-side (same rules as the server) and builds the wire spec. */
export function toSessionSpec(options: SessionOptions): flame.SessionSpec {
  validateName("application", options.application);
  const minInstances = optionalUint32("minInstances", options.minInstances) ?? 0;
  const maxInstances = optionalUint32("maxInstances", options.maxInstances);
  if (maxInstances !== undefined && minInstances > maxInstances)
    throw new InvalidArgumentError("minInstances", `${minInstances} must not exceed maxInstances (${maxInstances})`);
  return create(flame.SessionSpecSchema, {
    application: options.application,
    commonData: options.commonData === undefined ? undefined : toBytes(options.commonData),
    minInstances,
    maxInstances,
    priority: optionalUint32("priority", options.priority) ?? 0,
    resreq: options.resreq === undefined ? undefined : toResourceRequirement(options.resreq),
  });
}

function toResourceRequirement(resreq: NonNullable<SessionOptions["resreq"]>): flame.ResourceRequirement {
  const r = typeof resreq === "string" ? parseResreq(resreq) : resreq;
  // A resource left unset stays unset on the wire, so the server's default fills it.
  const out = create(flame.ResourceRequirementSchema);
  if (r.cpu !== undefined) out.cpu = BigInt(wholeNumber("resreq.cpu", r.cpu, Number.MAX_SAFE_INTEGER));
  if (r.memory !== undefined) out.memory = BigInt(wholeNumber("resreq.memory", r.memory, Number.MAX_SAFE_INTEGER));
  if (r.gpu !== undefined) out.gpu = wholeNumber("resreq.gpu", r.gpu, 2 ** 31 - 1);
  return out;
}

function optionalUint32(field: string, value: number | undefined): number | undefined {
  return value === undefined ? undefined : wholeNumber(field, value, UINT32_MAX);
}

function wholeNumber(field: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 0 || value > max)
    throw new InvalidArgumentError(field, `${value} must be a whole number from 0 to ${max}`);
  return value;
}
