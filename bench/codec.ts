/**
 * `npm run bench:codec`: the measured comparison behind Kiln's value codec
 * (docs/codec.md). For each candidate format: encode and decode throughput and
 * encoded size on five representative values, which of Kiln's must-keep
 * behaviours survive a round trip, and how the decoder takes hostile bytes.
 * A benchmark, not a test: it asserts nothing. BENCH_MS sets the time per
 * measurement (default 400 ms).
 *
 * msgpackr and cbor-x are compared when installed (`npm install --no-save
 * msgpackr cbor-x`). They are not devDependencies: their optional native
 * add-ons list per-platform packages that not every registry mirror carries,
 * and a lockfile without them makes `npm ci` fail.
 */
import { randomBytes } from "node:crypto";
import * as os from "node:os";
import { isDeepStrictEqual } from "node:util";
import * as v8 from "node:v8";
import { decodeValue, encodeValue, ObjectRef, type ObjectRefInit } from "@kiln/protocol";

interface Candidate {
  name: string;
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

const BENCH_MS = Number(process.env.BENCH_MS ?? 400);
const refFields = (ref: ObjectRef): ObjectRefInit => ref.toJSON();

// ---- v8.serialize: ObjectRef instances come back as plain objects, so refs are swapped for a marker and back.

const REF_MARK = "__kilnObjectRef";

function containsRef(v: unknown, seen = new Set<object>()): boolean {
  if (typeof v !== "object" || v === null || seen.has(v)) return false;
  seen.add(v);
  if (v instanceof ObjectRef) return true;
  if (ArrayBuffer.isView(v) || v instanceof Date || v instanceof Error) return false;
  const children = v instanceof Map ? [...v.keys(), ...v.values()] : v instanceof Set ? [...v] : Object.values(v);
  return children.some((c) => containsRef(c, seen));
}

function markRefs(v: unknown, copies = new Map<object, unknown>()): unknown {
  if (typeof v !== "object" || v === null) return v;
  if (v instanceof ObjectRef) return { [REF_MARK]: refFields(v) };
  if (copies.has(v)) return copies.get(v);
  if (Array.isArray(v)) {
    const out: unknown[] = [];
    copies.set(v, out);
    for (const item of v) out.push(markRefs(item, copies));
    return out;
  }
  if (v instanceof Map) {
    const out = new Map();
    copies.set(v, out);
    for (const [k, x] of v) out.set(markRefs(k, copies), markRefs(x, copies));
    return out;
  }
  if (v instanceof Set) {
    const out = new Set();
    copies.set(v, out);
    for (const x of v) out.add(markRefs(x, copies));
    return out;
  }
  if (Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {};
    copies.set(v, out);
    for (const [k, x] of Object.entries(v))
      Object.defineProperty(out, k, {
        value: markRefs(x, copies),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    return out;
  }
  return v;
}

function unmarkRefs(v: unknown, seen = new Set<object>()): unknown {
  if (typeof v !== "object" || v === null || seen.has(v)) return v;
  seen.add(v);
  if (Array.isArray(v)) v.forEach((x, i) => (v[i] = unmarkRefs(x, seen)));
  else if (v instanceof Map) for (const [k, x] of v) v.set(k, unmarkRefs(x, seen));
  else if (v instanceof Set)
    for (const x of [...v]) {
      const y = unmarkRefs(x, seen);
      if (y !== x) {
        v.delete(x);
        v.add(y);
      }
    }
  else if (Object.getPrototypeOf(v) === Object.prototype) {
    const rec = v as Record<string, unknown>;
    if (Object.keys(rec).length === 1 && REF_MARK in rec) return ObjectRef.from(rec[REF_MARK]);
    for (const k of Object.keys(rec)) {
      const x = unmarkRefs(rec[k], seen);
      if (k === "__proto__") Object.defineProperty(rec, k, { value: x });
      else rec[k] = x;
    }
  }
  return v;
}

// ---- JSON with tags: special values become {"$t": tag, "v": payload}; plain objects holding a "$t" key are escaped.

function toTagged(v: unknown, stack: Set<object>): unknown {
  switch (typeof v) {
    case "number":
      return Number.isFinite(v) && !Object.is(v, -0) ? v : { $t: "num", v: String(Object.is(v, -0) ? "-0" : v) };
    case "bigint":
      return { $t: "big", v: v.toString() };
    case "undefined":
      return { $t: "undef" };
    case "string":
    case "boolean":
      return v;
    case "object":
      break;
    default:
      throw new TypeError(`cannot encode ${typeof v}`);
  }
  if (v === null) return null;
  if (stack.has(v)) throw new TypeError("cycles are not supported");
  stack.add(v);
  try {
    const t = (x: unknown) => toTagged(x, stack);
    if (Array.isArray(v)) return v.map(t);
    if (v instanceof Date) return { $t: "date", v: v.getTime() || null };
    if (v instanceof Map) return { $t: "map", v: [...v].map(([k, x]) => [t(k), t(x)]) };
    if (v instanceof Set) return { $t: "set", v: [...v].map(t) };
    if (v instanceof ObjectRef) return { $t: "ref", v: refFields(v) };
    if (Buffer.isBuffer(v)) return { $t: "buf", v: v.toString("base64") };
    if (ArrayBuffer.isView(v))
      return {
        $t: "ta",
        k: v.constructor.name,
        v: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64"),
      };
    if (v instanceof Error) return { $t: "err", n: v.name, m: v.message, s: v.stack };
    const entries = Object.entries(v).map(([k, x]) => [k, t(x)] as const);
    const out = Object.fromEntries(entries);
    return "$t" in v ? { $t: "obj", v: out } : out;
  } finally {
    stack.delete(v);
  }
}

const TYPED: Record<string, new (b: ArrayBuffer) => ArrayBufferView> = {
  Float64Array,
  Uint8Array,
  Int32Array,
  Float32Array,
};

function fromTagged(v: unknown): unknown {
  if (typeof v !== "object" || v === null) return v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = fromTagged(v[i]);
    return v;
  }
  const rec = v as Record<string, unknown>;
  const tag = rec.$t;
  const payload = rec.v;
  if (typeof tag === "string") {
    switch (tag) {
      case "num":
        return Number(payload);
      case "big":
        return BigInt(payload as string);
      case "undef":
        return undefined;
      case "date":
        return new Date(payload === null ? NaN : (payload as number));
      case "map":
        return new Map((payload as [unknown, unknown][]).map(([k, x]) => [fromTagged(k), fromTagged(x)]));
      case "set":
        return new Set((payload as unknown[]).map(fromTagged));
      case "ref":
        return ObjectRef.from(payload);
      case "buf":
        return Buffer.from(payload as string, "base64");
      case "ta": {
        const bytes = Buffer.from(payload as string, "base64");
        const ctor = TYPED[rec.k as string];
        if (!ctor) throw new TypeError(`unknown typed array ${String(rec.k)}`);
        return new ctor(new Uint8Array(bytes).buffer);
      }
      case "err": {
        const e = new Error(rec.m as string);
        e.name = rec.n as string;
        e.stack = rec.s as string;
        return e;
      }
      case "obj":
        return fromTaggedObject(payload as Record<string, unknown>);
    }
  }
  return fromTaggedObject(rec);
}

function fromTaggedObject(rec: Record<string, unknown>): unknown {
  for (const k of Object.keys(rec)) {
    const x = fromTagged(rec[k]);
    if (k === "__proto__") Object.defineProperty(rec, k, { value: x });
    else rec[k] = x;
  }
  return rec;
}

// ---- The candidates.

// ObjectRef's constructor is private (refs are built by ObjectRef.from); the libraries only use Class for instanceof.
const RefClass = ObjectRef as unknown as new () => ObjectRef;

interface MsgpackrModule {
  addExtension(ext: { Class: unknown; type: number; write(v: never): unknown; read(v: unknown): unknown }): void;
  Packr: new (options: object) => { pack(v: unknown): Uint8Array; unpack(b: Uint8Array): unknown };
}
interface CborModule {
  addExtension(ext: {
    Class: unknown;
    tag: number;
    encode(v: never, encode: (v: unknown) => Uint8Array): Uint8Array;
    decode(v: unknown): unknown;
  }): void;
  Encoder: new (options: object) => { encode(v: unknown): Uint8Array; decode(b: Uint8Array): unknown };
}

/** Imports a candidate library if it is installed; the name is a variable so the typecheck does not need it. */
async function importIfInstalled<T>(name: string): Promise<T | undefined> {
  try {
    return (await import(name)) as T;
  } catch {
    console.log(`(${name} not installed: skipped; npm install --no-save ${name} to compare it)`);
    return undefined;
  }
}

async function libraryCandidates(): Promise<Candidate[]> {
  const found: Candidate[] = [];
  const msgpackr = await importIfInstalled<MsgpackrModule>("msgpackr");
  if (msgpackr) {
    msgpackr.addExtension({
      Class: RefClass,
      type: 42,
      write: (ref: ObjectRef) => refFields(ref),
      read: (fields: unknown) => ObjectRef.from(fields),
    });
    const records = new msgpackr.Packr({ structuredClone: true });
    const maps = new msgpackr.Packr({ structuredClone: true, useRecords: false });
    found.push(
      { name: "msgpackr (records)", encode: (v) => records.pack(v), decode: (b) => records.unpack(b) },
      { name: "msgpackr (maps)", encode: (v) => maps.pack(v), decode: (b) => maps.unpack(b) },
    );
  }
  const cborX = await importIfInstalled<CborModule>("cbor-x");
  if (cborX) {
    cborX.addExtension({
      Class: RefClass,
      tag: 40501,
      encode: (ref: ObjectRef, encode: (v: unknown) => Uint8Array) => encode(refFields(ref)),
      decode: (fields: unknown) => ObjectRef.from(fields),
    });
    const cbor = new cborX.Encoder({ structuredClone: true, useRecords: false });
    found.push({ name: "cbor-x", encode: (v) => cbor.encode(v), decode: (b) => cbor.decode(b) });
  }
  return found;
}

const text = new TextDecoder();

const candidates: Candidate[] = [
  { name: "kiln v1 (own binary)", encode: (v) => encodeValue(v), decode: decodeValue },
  { name: "v8.serialize (raw)", encode: (v) => v8.serialize(v), decode: (b) => v8.deserialize(b) },
  {
    name: "v8.serialize + ref walk",
    encode: (v) => v8.serialize(containsRef(v) ? markRefs(v) : v),
    decode: (b) => unmarkRefs(v8.deserialize(b)),
  },
  ...(await libraryCandidates()),
  {
    name: "JSON with tags",
    encode: (v) => Buffer.from(JSON.stringify(toTagged(v, new Set()))),
    decode: (b) => fromTagged(JSON.parse(text.decode(b))),
  },
];

// ---- Representative values.

const sha = "0f".repeat(32);
const ref = (i: number) =>
  ObjectRef.from({
    endpoint: "http://127.0.0.1:7422",
    key: `app/s1/obj-${i}`,
    version: 1 + (i % 5),
    size: 1000 + i,
    sha256: sha,
  });

const values: { name: string; value: unknown }[] = [
  {
    name: "small task args",
    value: {
      method: "score",
      args: [42, "user-1234", { threshold: 0.75, tags: ["a", "b"] }],
      requestId: "9f1c2b7e",
      ts: 1712345678901,
    },
  },
  { name: "100k numbers", value: Array.from({ length: 100_000 }, () => Math.random() * 1000) },
  { name: "1 MiB Buffer", value: randomBytes(1 << 20) },
  {
    name: "nested Map/Set/Date/BigInt/refs",
    value: {
      users: new Map(
        Array.from({ length: 50 }, (_, i) => [
          `user-${i}`,
          {
            joined: new Date(1_700_000_000_000 + i * 86_400_000),
            balance: BigInt(i) * 10n ** 20n,
            roles: new Set(["reader", i % 3 ? "writer" : "admin"]),
            data: ref(i),
          },
        ]),
      ),
      config: { retries: 3, timeoutMs: 1500, regions: ["eu", "us"], weights: new Float64Array([0.1, 0.2, 0.7]) },
      shared: [ref(100), ref(101)],
    },
  },
  {
    name: "10k small objects",
    value: Array.from({ length: 10_000 }, (_, i) => ({
      id: i,
      name: `item-${i}`,
      score: i * 0.5,
      active: i % 2 === 0,
    })),
  },
];

// ---- Throughput.

const WARM_CALLS = 200;
const MAX_WARM_MS = 3000;

/**
 * µs per call. Warms the JIT (at least WARM_CALLS calls and half the budget,
 * at most MAX_WARM_MS), then times three rounds of a third of the budget each
 * and keeps the fastest: on a shared 2-core machine the slower rounds measure
 * the neighbours.
 */
function timeOps(fn: () => void): number {
  const warmStart = performance.now();
  for (let calls = 0; ; calls++) {
    const elapsed = performance.now() - warmStart;
    if ((calls >= WARM_CALLS && elapsed >= BENCH_MS / 2) || elapsed >= MAX_WARM_MS) break;
    fn();
  }
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    let ops = 0;
    const start = performance.now();
    let elapsed = 0;
    while (elapsed < BENCH_MS / 3 || ops === 0) {
      fn();
      ops++;
      elapsed = performance.now() - start;
    }
    best = Math.min(best, (elapsed * 1000) / ops);
  }
  return best;
}

function formatUs(us: number, size: number): string {
  const time = us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(us < 10 ? 2 : 1)} µs`;
  const mbps = size / us; // bytes per µs = MB/s
  return `${time} (${mbps >= 100 ? mbps.toFixed(0) : mbps.toFixed(1)} MB/s)`;
}

function formatSize(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

// ---- Round-trip fidelity probes: what Kiln's value model must keep.

class KilnLikeError extends Error {
  code = "E_DEMO";
  constructor(message: string) {
    super(message, { cause: new RangeError("inner") });
    this.name = "KilnLikeError";
  }
}
const cyclic: Record<string, unknown> = { name: "loop" };
cyclic.self = cyclic;
const protoKey = JSON.parse('{"__proto__": {"polluted": true}, "constructor": 1}') as object;

const probes: { name: string; value: unknown; ok: (back: unknown) => boolean }[] = [
  {
    name: "ObjectRef stays an ObjectRef",
    value: { r: ref(1) },
    ok: (b) => (b as { r: unknown }).r instanceof ObjectRef,
  },
  { name: "Buffer comes back as Buffer", value: Buffer.from("hi"), ok: (b) => Buffer.isBuffer(b) },
  {
    name: "__proto__ key stays own data",
    value: protoKey,
    ok: (b) => isDeepStrictEqual(b, protoKey) && Object.getPrototypeOf(b) === Object.prototype,
  },
  {
    name: "-0, NaN, ±Infinity",
    value: [-0, NaN, Infinity, -Infinity],
    ok: (b) => isDeepStrictEqual(b, [-0, NaN, Infinity, -Infinity]),
  },
  {
    name: "BigInt, Map, Set",
    value: [2n ** 70n, new Map([[1, "a"]]), new Set([1])],
    ok: (b) => isDeepStrictEqual(b, [2n ** 70n, new Map([[1, "a"]]), new Set([1])]),
  },
  { name: "invalid Date", value: new Date(NaN), ok: (b) => b instanceof Date && Number.isNaN(b.getTime()) },
  { name: "lone surrogate string", value: "a\uD800b", ok: (b) => b === "a\uD800b" },
  { name: "undefined property kept", value: { u: undefined }, ok: (b) => isDeepStrictEqual(b, { u: undefined }) },
  {
    name: "Error subclass name, cause, code",
    value: new KilnLikeError("boom"),
    ok: (b) =>
      b instanceof Error &&
      b.name === "KilnLikeError" &&
      (b as { code?: string }).code === "E_DEMO" &&
      b.cause instanceof RangeError,
  },
  { name: "cycle kept", value: cyclic, ok: (b) => (b as { self: unknown }).self === b },
  {
    name: "Float64Array",
    value: new Float64Array([1.5, -2]),
    ok: (b) => isDeepStrictEqual(b, new Float64Array([1.5, -2])),
  },
];

function fidelity(c: Candidate): string[] {
  const failed: string[] = [];
  for (const p of probes) {
    try {
      if (!p.ok(c.decode(c.encode(p.value)))) failed.push(p.name);
    } catch {
      failed.push(p.name);
    }
  }
  return failed;
}

// ---- Hostile bytes: random mutations of valid encodings, plus huge length claims.

function mutate(seed: Uint8Array, rnd: () => number): Uint8Array {
  const b = Buffer.from(seed);
  const kind = rnd();
  if (kind < 0.3) return b.subarray(0, Math.floor(rnd() * b.length));
  const flips = 1 + Math.floor(rnd() * 4);
  for (let i = 0; i < flips; i++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
  if (kind > 0.9) return Buffer.concat([b.subarray(0, 1), Buffer.alloc(8, 0xff), b.subarray(1)]);
  return b;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

const FUZZ_TRIES = 3000;

function fuzz(c: Candidate): { decoded: number; threw: number; slowestMs: number; errorTypes: string[] } {
  const rnd = lcg(7);
  const seeds = [
    ...values.filter((v) => v.name !== "100k numbers" && v.name !== "1 MiB Buffer").map((v) => v.value),
    ...probes.map((p) => p.value),
  ]
    .map((v) => {
      try {
        return c.encode(v);
      } catch {
        return undefined;
      }
    })
    .filter((b): b is Uint8Array => b !== undefined && b.length < 200_000);
  let decoded = 0;
  let threw = 0;
  let slowestMs = 0;
  const errorTypes = new Set<string>();
  for (let i = 0; i < FUZZ_TRIES; i++) {
    const input = mutate(seeds[i % seeds.length]!, rnd);
    const start = performance.now();
    try {
      c.decode(input);
      decoded++;
    } catch (e) {
      threw++;
      errorTypes.add(e instanceof Error ? e.name : typeof e);
    }
    slowestMs = Math.max(slowestMs, performance.now() - start);
  }
  return { decoded, threw, slowestMs, errorTypes: [...errorTypes].sort() };
}

// ---- Report.

function printTable(header: string[], rows: string[][]): void {
  console.log(`| ${header.join(" | ")} |`);
  console.log(`| ${header.map(() => "---").join(" | ")} |`);
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
  console.log();
}

console.log(
  `Machine: ${os.cpus()[0]?.model ?? "unknown CPU"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
    `Node ${process.version} (V8 ${process.versions.v8}); ${BENCH_MS} ms per measurement\n`,
);

for (const { name, value } of values) {
  console.log(`### ${name}\n`);
  const rows: string[][] = [];
  for (const c of candidates) {
    let bytes: Uint8Array;
    try {
      bytes = c.encode(value);
      c.decode(bytes);
    } catch (e) {
      rows.push([c.name, "fails", "fails", (e as Error).message.slice(0, 60)]);
      continue;
    }
    const enc = timeOps(() => c.encode(value));
    const dec = timeOps(() => c.decode(bytes));
    rows.push([c.name, formatUs(enc, bytes.length), formatUs(dec, bytes.length), formatSize(bytes.length)]);
  }
  printTable(["format", "encode (MB/s of output)", "decode (MB/s of input)", "size"], rows);
}

console.log("### Round-trip fidelity (probes that fail)\n");
printTable(
  ["format", "fails"],
  candidates.map((c) => [c.name, fidelity(c).join("; ") || "none"]),
);

console.log(`### Hostile bytes (${FUZZ_TRIES} mutated encodings each)\n`);
printTable(
  ["format", "decoded", "threw", "slowest input", "errors thrown"],
  candidates.map((c) => {
    const r = fuzz(c);
    return [c.name, String(r.decoded), String(r.threw), `${r.slowestMs.toFixed(1)} ms`, r.errorTypes.join(", ")];
  }),
);
