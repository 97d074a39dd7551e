import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { runInNewContext } from "node:vm";
import { FORMAT_VERSION, MAX_DEPTH, Tag } from "../src/codec/format.js";
import { CODEC_FORMAT_VERSION } from "../src/codec/index.js";
import { CodecError } from "../src/codec/errors.js";
import { decodeObjectRef, encodeObjectRef } from "../src/codec/object-ref-bytes.js";
import { decodeValue } from "../src/codec/decode.js";
import { encodeValue } from "../src/codec/encode.js";
import { ErrorCode, InvalidArgumentError, KilnError } from "../src/errors.js";
import { ObjectRef, type ObjectRefInit } from "../src/objects/object-ref.js";

const SHA = "3a".repeat(32);
const REF: ObjectRefInit = {
  endpoint: "http://127.0.0.1:7422",
  key: "app/s1/obj-1",
  version: 3,
  size: 1234,
  sha256: SHA,
};
const ref = (overrides: Partial<ObjectRefInit> = {}) => ObjectRef.from({ ...REF, ...overrides });

const roundTrip = <T>(value: T): T => decodeValue(encodeValue(value)) as T;

/** Hand-built encodings, for bytes the encoder would never write. */
function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}
const bytes = (...parts: (number | number[])[]) => Uint8Array.from(parts.flat());
const str = (s: string) => [...varint(Buffer.byteLength(s) * 2), ...Buffer.from(s)];

function isCodecError(field?: string, includes?: string) {
  return (e: unknown) => {
    assert.ok(e instanceof CodecError, `expected a CodecError, got ${String(e)}`);
    assert.ok(e instanceof InvalidArgumentError && e instanceof KilnError);
    assert.equal(e.code, ErrorCode.InvalidArgument);
    if (field !== undefined) assert.equal(e.field, field, e.message);
    if (includes !== undefined) assert.ok(e.message.includes(includes), `"${e.message}" should include "${includes}"`);
    return true;
  };
}

class DemoError extends Error {
  code = "E_DEMO";
  retryable = true;
  constructor(message: string, cause?: unknown) {
    super(message, { cause });
    this.name = "DemoError";
  }
}

const TYPED_ARRAYS: ArrayBufferView[] = [
  new Int8Array([-128, 0, 127]),
  new Uint8Array([0, 1, 255]),
  new Uint8ClampedArray([0, 128, 255]),
  new Int16Array([-32768, 1, 32767]),
  new Uint16Array([0, 65535]),
  new Int32Array([-(2 ** 31), 7, 2 ** 31 - 1]),
  new Uint32Array([0, 2 ** 32 - 1]),
  new Float32Array([1.5, -0, NaN, Infinity]),
  new Float64Array([Math.PI, -0, NaN, -Infinity]),
  new BigInt64Array([-(2n ** 63n), 0n, 2n ** 63n - 1n]),
  new BigUint64Array([0n, 2n ** 64n - 1n]),
];

const ROUND_TRIPS: { name: string; value: unknown }[] = [
  { name: "undefined", value: undefined },
  { name: "null", value: null },
  { name: "booleans", value: [true, false] },
  {
    name: "numbers",
    value: [0, -0, 1, -1, 63, 64, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, 2 ** 53, -(2 ** 53), 1.5, Number.MIN_VALUE],
  },
  { name: "NaN and infinities", value: [NaN, Infinity, -Infinity, Number.MAX_VALUE] },
  {
    name: "strings",
    value: ["", "ascii", "héllo wörld", "emoji 🎉", "\0nul", "x".repeat(100_000), "日本語".repeat(50)],
  },
  { name: "a leading byte order mark", value: "\uFEFFbom" },
  { name: "lone surrogates", value: ["\uD800", "a\uDC00b", "🎉\uD83D", "x".repeat(60) + "\uDFFF"] },
  { name: "BigInt", value: [0n, 1n, -1n, 255n, 256n, 2n ** 64n, -(2n ** 200n) + 7n] },
  { name: "dates", value: [new Date(0), new Date(8.64e15), new Date(-8.64e15), new Date(1712345678901)] },
  {
    name: "Map",
    value: new Map<unknown, unknown>([
      ["a", 1],
      [2, "b"],
      [NaN, null],
      [{ k: 1 }, [1, 2]],
    ]),
  },
  { name: "Set", value: new Set<unknown>([1, "1", 1n, null, undefined, { a: 1 }]) },
  ...TYPED_ARRAYS.map((value) => ({ name: value.constructor.name, value })),
  { name: "ArrayBuffer", value: Uint8Array.from([9, 8, 7]).buffer },
  { name: "DataView", value: new DataView(Uint8Array.from([1, 2, 3, 4]).buffer) },
  { name: "arrays", value: [[], [1, [2, [3, []]]], ["mixed", 1, null, undefined, true]] },
  { name: "plain objects", value: { a: 1, nested: { b: [1, { c: "d" }] }, empty: {}, u: undefined, "spaced key": 2 } },
  { name: "integer-like keys", value: { 2: "b", 1: "a", x: 0 } },
  {
    name: "a mix of everything, ObjectRefs inside",
    value: {
      refs: [ref(), ref({ key: "app/s1/obj-2", version: 1 })],
      byKey: new Map([["input", ref()]]),
      set: new Set([ref({ size: 0 })]),
      when: new Date(5),
      total: 10n ** 30n,
      weights: new Float64Array([0.25, 0.75]),
      raw: Buffer.from("payload"),
      failure: new RangeError("out of range"),
    },
  },
];

describe("codec round trip", () => {
  for (const { name, value } of ROUND_TRIPS) {
    test(name, () => {
      assert.deepStrictEqual(roundTrip(value), value);
    });
  }

  test("an invalid date stays an invalid date", () => {
    // deepStrictEqual compares getTime() with ===, so NaN never matches NaN.
    const back = roundTrip(new Date(NaN));
    assert.ok(back instanceof Date && Number.isNaN(back.getTime()));
  });

  test("a Buffer comes back as a Buffer, a Uint8Array as a Uint8Array", () => {
    const [buf, u8] = roundTrip([Buffer.from("hi"), new Uint8Array([1, 2])]) as [unknown, unknown];
    assert.ok(Buffer.isBuffer(buf));
    assert.deepEqual([...(buf as Buffer)], [104, 105]);
    assert.ok(!Buffer.isBuffer(u8) && u8 instanceof Uint8Array);
  });

  test("a typed array view keeps only its own bytes, in a fresh aligned buffer", () => {
    const backing = new Float64Array([1, 2, 3, 4]);
    const view = new Float64Array(backing.buffer, 8, 2);
    const back = roundTrip(view);
    assert.deepEqual([...back], [2, 3]);
    assert.equal(back.buffer.byteLength, 16);
    const odd = roundTrip(new Uint8Array(backing.buffer, 3, 5));
    assert.equal(odd.byteLength, 5);
  });

  test("decoded bytes do not alias the input", () => {
    const encoded = encodeValue(Buffer.from("abc"));
    const back = decodeValue(encoded) as Buffer;
    encoded.fill(0);
    assert.equal(back.toString(), "abc");
  });

  test("errors keep name, message, stack, cause and own properties", () => {
    const original = new DemoError("it broke", new TypeError("inner"));
    const back = roundTrip(original);
    assert.ok(back instanceof Error);
    assert.equal(back.name, "DemoError");
    assert.equal(back.message, "it broke");
    assert.equal(back.stack, original.stack);
    assert.equal(back.code, "E_DEMO");
    assert.equal(back.retryable, true);
    assert.ok(back.cause instanceof TypeError);
    assert.equal((back.cause as Error).message, "inner");
    assert.ok(!Object.keys(back).includes("stack") && !Object.keys(back).includes("cause"));
  });

  test("built-in error types come back as themselves", () => {
    for (const ctor of [Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError]) {
      const back = roundTrip(new ctor("m"));
      assert.equal(Object.getPrototypeOf(back), ctor.prototype, ctor.name);
    }
  });

  test("an AggregateError keeps its errors", () => {
    const back = roundTrip(new AggregateError([new TypeError("a"), "b"], "several"));
    assert.equal(back.name, "AggregateError");
    assert.equal(back.message, "several");
    assert.ok(back.errors[0] instanceof TypeError);
    assert.equal(back.errors[1], "b");
  });

  test("an error without a stack has none after decoding", () => {
    const e = new Error("no stack");
    delete e.stack;
    assert.equal(roundTrip(e).stack, undefined);
  });

  test("__proto__, constructor and prototype stay own data properties; nothing is polluted", () => {
    const value = JSON.parse('{"__proto__": {"polluted": true}, "constructor": {"prototype": 1}, "toString": 2}');
    const back = roundTrip(value) as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(back), Object.prototype);
    assert.deepEqual(Object.keys(back), ["__proto__", "constructor", "toString"]);
    assert.deepEqual(Object.getOwnPropertyDescriptor(back, "__proto__")?.value, { polluted: true });
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  test("a null-prototype object comes back as a plain object with the same properties", () => {
    const value = Object.assign(Object.create(null) as object, { a: 1 });
    const back = roundTrip(value);
    assert.equal(Object.getPrototypeOf(back), Object.prototype);
    assert.deepEqual({ ...back }, { a: 1 });
  });

  test("array holes come back as undefined", () => {
    const back = roundTrip([1, , 3]);
    assert.equal(back.length, 3);
    assert.ok(1 in back);
    assert.equal(back[1], undefined);
  });

  test("shared references stay shared and cycles are kept", () => {
    const shared = { n: 1 };
    const cyclic: Record<string, unknown> = { name: "self" };
    cyclic.self = cyclic;
    const map = new Map<string, unknown>();
    map.set("me", map);
    const err = new Error("loop") as Error & { again?: unknown };
    err.again = err;
    const back = roundTrip({ a: shared, b: [shared], cyclic, map, err, ref: [ref(), ref()] });
    assert.equal(back.a, back.b[0]);
    assert.equal(back.cyclic.self, back.cyclic);
    assert.equal(back.map.get("me"), back.map);
    assert.equal(back.err.again, back.err);
    assert.notEqual(back.a, shared);
  });

  test("nesting up to the limit round-trips", () => {
    let deep: unknown = "bottom";
    for (let i = 0; i < MAX_DEPTH; i++) deep = [deep];
    assert.deepStrictEqual(roundTrip(deep), deep);
  });

  test("encoding runs again after a failure, and inside a getter of the value being encoded", () => {
    assert.throws(() => encodeValue({ f: () => 1 }));
    assert.deepStrictEqual(roundTrip({ a: 1 }), { a: 1 });
    const value = {
      get inner() {
        return decodeValue(encodeValue({ deep: [1, 2] }));
      },
      after: "x".repeat(70_000),
    };
    assert.deepStrictEqual(roundTrip(value), { inner: { deep: [1, 2] }, after: "x".repeat(70_000) });
  });

  test("the first byte is the format version", () => {
    assert.equal(CODEC_FORMAT_VERSION, 1);
    assert.equal(encodeValue(null)[0], CODEC_FORMAT_VERSION);
  });
});

describe("codec refuses what it cannot encode, naming where", () => {
  class Point {
    x = 1;
  }
  const cases: { name: string; value: unknown; path: string; rule: string }[] = [
    { name: "a function", value: [1, { handler() {} }], path: "args[1].handler", rule: "functions cannot be encoded" },
    { name: "a symbol", value: { tag: Symbol("t") }, path: "args.tag", rule: "symbols cannot be encoded" },
    { name: "a class instance", value: [new Point()], path: "args[0]", rule: "instances of Point cannot be encoded" },
    { name: "a promise", value: { p: Promise.resolve(1) }, path: "args.p", rule: "promises cannot be encoded" },
    { name: "a WeakMap", value: [new WeakMap()], path: "args[0]", rule: "WeakMap and WeakSet" },
    { name: "a WeakSet", value: [new WeakSet()], path: "args[0]", rule: "WeakMap and WeakSet" },
    { name: "a SharedArrayBuffer", value: [new SharedArrayBuffer(4)], path: "args[0]", rule: "SharedArrayBuffer" },
    { name: "a boxed primitive", value: { s: new String("x") }, path: "args.s", rule: "boxed primitives" },
    { name: "a RegExp", value: { re: /x/ }, path: "args.re", rule: "instances of RegExp" },
    { name: "an Array subclass", value: [new (class Stack extends Array {})()], path: "args[0]", rule: "Stack" },
    {
      name: "an object from another realm",
      value: { o: runInNewContext("({ a: 1 })") },
      path: "args.o",
      rule: "Object from another realm",
    },
    {
      name: "a function in a Map value",
      value: [new Map([["k", () => 1]])],
      path: 'args[0].get("k")',
      rule: "functions",
    },
    { name: "a function as a Map key", value: new Map([[() => 1, 1]]), path: "args.<key of map entry 0>", rule: "" },
    { name: "a function in a Set", value: new Set([1, () => 1]), path: "args.<set item 1>", rule: "functions" },
    {
      name: "a function in an error cause",
      value: new Error("x", { cause: { fn: () => 1 } }),
      path: "args.cause.fn",
      rule: "functions",
    },
    { name: "an odd key", value: { "my key": [() => 1] }, path: 'args["my key"][0]', rule: "functions" },
  ];
  for (const c of cases) {
    test(c.name, () => {
      assert.throws(() => encodeValue(c.value, { path: "args" }), isCodecError(c.path, c.rule));
      assert.throws(
        () => encodeValue(c.value, { path: "args" }),
        (e: Error) => e.message.startsWith(`${c.path}: `),
      );
    });
  }

  test("the default path is `value`", () => {
    assert.throws(() => encodeValue(() => 1), isCodecError("value", "functions cannot be encoded"));
  });

  test("nesting deeper than the limit is refused with a shortened path", () => {
    let deep: unknown = 1;
    for (let i = 0; i <= MAX_DEPTH; i++) deep = [deep];
    assert.throws(
      () => encodeValue(deep),
      (e: unknown) => {
        assert.ok(e instanceof CodecError);
        assert.ok(e.message.includes(`nesting deeper than ${MAX_DEPTH} levels`), e.message);
        assert.ok(e.message.length < 400, "the path is shortened");
        return true;
      },
    );
  });

  test("an error thrown by a getter is the caller's own error, unchanged", () => {
    const boom = new Error("getter failed");
    const value = {
      get x() {
        throw boom;
      },
    };
    assert.throws(
      () => encodeValue(value),
      (e) => e === boom,
    );
  });
});

describe("codec on hostile bytes", () => {
  test("not a Uint8Array", () => {
    assert.throws(() => decodeValue("text" as unknown as Uint8Array), isCodecError("bytes"));
  });

  test("empty input", () => {
    assert.throws(() => decodeValue(new Uint8Array(0)), isCodecError("bytes", "empty"));
  });

  test("an unknown format version is refused with a clear message", () => {
    for (const v of [0, 2, 0xff]) {
      const input = encodeValue("x");
      input[0] = v;
      assert.throws(
        () => decodeValue(input),
        isCodecError("bytes", `version ${v}, but this Kiln reads version ${FORMAT_VERSION}`),
      );
    }
  });

  test("every truncation of a valid encoding is refused", () => {
    const full = encodeValue(ROUND_TRIPS.map((c) => c.value).filter((v) => !(typeof v === "string")));
    for (let end = 1; end < full.length; end += end < 2000 ? 1 : 97) {
      assert.throws(() => decodeValue(full.subarray(0, end)), isCodecError("bytes"), `prefix of ${end} bytes`);
    }
  });

  test("trailing bytes are refused", () => {
    assert.throws(() => decodeValue(bytes(FORMAT_VERSION, Tag.Null, 0)), isCodecError("bytes", "trailing"));
  });

  const lie = 2 ** 50;
  const hostile: { name: string; input: Uint8Array; says: string }[] = [
    { name: "an unknown tag", input: bytes(1, 0x7f), says: "unknown tag 0x7f" },
    { name: "a huge string length", input: bytes(1, Tag.String, varint(lie * 2), 65), says: "truncated" },
    { name: "a huge UTF-16 length", input: bytes(1, Tag.String, varint(lie * 2 + 1), 65, 0), says: "truncated" },
    { name: "a huge array count", input: bytes(1, Tag.Array, varint(2 ** 53 - 1), Tag.Null), says: "longer than" },
    { name: "a huge object count", input: bytes(1, Tag.Object, varint(lie), 2, 97, 1), says: "longer than" },
    { name: "a huge map count", input: bytes(1, Tag.Map, varint(lie)), says: "longer than" },
    { name: "a huge set count", input: bytes(1, Tag.Set, varint(lie)), says: "longer than" },
    { name: "a huge Buffer length", input: bytes(1, Tag.Buffer, varint(lie), 1, 2), says: "truncated" },
    { name: "a huge ArrayBuffer length", input: bytes(1, Tag.ArrayBuffer, varint(lie)), says: "truncated" },
    { name: "a huge typed array", input: bytes(1, Tag.TypedArray, 8, varint(lie)), says: "truncated" },
    { name: "a huge BigInt", input: bytes(1, Tag.BigInt, 0, varint(lie), 1), says: "too large" },
    { name: "a BigInt sign that is not a flag", input: bytes(1, Tag.BigInt, 2, 0), says: "flag" },
    { name: "an overlong varint", input: bytes(1, Tag.Array, Array(10).fill(0xff), 0), says: "varint" },
    { name: "a varint above 2^53", input: bytes(1, Tag.Array, [...Array(7).fill(0xff), 0x7f]), says: "2^53" },
    { name: "an int beyond 32 bits", input: bytes(1, Tag.Int, varint(2 ** 33)), says: "out of range" },
    { name: "a truncated float", input: bytes(1, Tag.Float, 0, 0, 0), says: "truncated" },
    { name: "an unknown typed array kind", input: bytes(1, Tag.TypedArray, 99, 0), says: "kind 99" },
    { name: "a ragged typed array", input: bytes(1, Tag.TypedArray, 8, 3, 1, 2, 3), says: "whole number" },
    { name: "a reference ahead", input: bytes(1, Tag.Array, 1, Tag.Ref, 5), says: "unknown object 5" },
    { name: "a self reference at the root", input: bytes(1, Tag.Ref, 0), says: "unknown object 0" },
    { name: "an error flag of 7", input: bytes(1, Tag.Error, str("Error"), str("m"), 7), says: "flag" },
    {
      name: "an ObjectRef with a traversal key",
      input: bytes(1, Tag.ObjectRef, str("http://127.0.0.1:7422"), str("app/../x"), 1, 0, Array(32).fill(0)),
      says: "invalid ObjectRef",
    },
    {
      name: "an ObjectRef with version 0",
      input: bytes(1, Tag.ObjectRef, str("http://127.0.0.1:7422"), str("a/b/c"), 0, 0, Array(32).fill(0)),
      says: "version",
    },
    {
      name: "an ObjectRef with a file: endpoint",
      input: bytes(1, Tag.ObjectRef, str("file:///etc"), str("a/b/c"), 1, 0, Array(32).fill(0)),
      says: "endpoint",
    },
    {
      name: "nesting past the limit",
      input: bytes(
        1,
        Array(MAX_DEPTH + 1)
          .fill([Tag.Array, 1])
          .flat(),
        Tag.Null,
      ),
      says: "nesting deeper",
    },
    {
      name: "100k levels of nesting",
      input: bytes(1, Array(100_000).fill([Tag.Object, 1, 2, 97]).flat()),
      says: "nesting",
    },
  ];
  for (const h of hostile) {
    test(h.name, () => {
      assert.throws(() => decodeValue(h.input), isCodecError("bytes", h.says));
    });
  }

  test("an Error with any name is built from a fixed set of constructors, never one looked up by name", () => {
    for (const name of ["Function", "eval", "constructor", "__proto__", "toString", "Promise"]) {
      const back = decodeValue(bytes(1, Tag.Error, str(name), str("1+1"), 0, 0, 0));
      assert.equal(Object.getPrototypeOf(back), Error.prototype, name);
      assert.equal((back as Error).name, name);
      assert.equal((back as Error).message, "1+1");
    }
  });

  test("invalid UTF-8 decodes to replacement characters, not an exception", () => {
    assert.equal(decodeValue(bytes(1, Tag.String, 4, 0xff, 0xfe)), "\uFFFD\uFFFD");
  });

  test("fuzz: thousands of mutated encodings either decode or throw CodecError", () => {
    let seed = 12345;
    const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    const pick = (n: number) => Math.floor(rnd() * n);
    const seeds = ROUND_TRIPS.map((c) => encodeValue(c.value)).filter((b) => b.length < 5000);
    seeds.push(encodeValue({ cyclic: ROUND_TRIPS, err: new DemoError("x", new Error("y")) }));
    const prototypeKeys = Object.getOwnPropertyNames(Object.prototype).join();
    let decoded = 0;
    const runs = 20_000;
    for (let i = 0; i < runs; i++) {
      const base = Buffer.from(seeds[pick(seeds.length)]!);
      let input: Uint8Array;
      switch (pick(5)) {
        case 0: // truncate
          input = base.subarray(0, pick(base.length));
          break;
        case 1: // overwrite a few bytes
          for (let k = 0; k <= pick(4); k++) base[1 + pick(base.length - 1)] = pick(256);
          input = base;
          break;
        case 2: // insert 0xff runs (huge varints) at a random place
          input = Buffer.concat([base.subarray(0, 1 + pick(base.length)), Buffer.alloc(1 + pick(9), 0xff), base]);
          break;
        case 3: // splice two encodings
          input = Buffer.concat([base.subarray(0, pick(base.length)), seeds[pick(seeds.length)]!.subarray(1)]);
          break;
        default: // random bytes after the version
          input = Buffer.from([FORMAT_VERSION, ...Array.from({ length: pick(64) }, () => pick(256))]);
      }
      try {
        decodeValue(input);
        decoded++;
      } catch (e) {
        if (!(e instanceof CodecError)) assert.fail(`run ${i}: ${String(e)} for ${Buffer.from(input).toString("hex")}`);
      }
    }
    assert.ok(decoded > 0 && decoded < runs, `${decoded} of ${runs} decoded`);
    assert.equal(Object.getOwnPropertyNames(Object.prototype).join(), prototypeKeys);
  });
});

describe("ObjectRef", () => {
  test("from() keeps the fields; the ref is frozen; toJSON gives them back", () => {
    const r = ref();
    assert.deepEqual({ ...r }, REF);
    assert.ok(Object.isFrozen(r));
    assert.deepEqual(r.toJSON(), REF);
    assert.deepEqual(ObjectRef.from(JSON.stringify(r)), r);
    assert.equal(ObjectRef.from(r), r);
  });

  test("unknown fields are ignored", () => {
    assert.deepEqual(ObjectRef.from({ ...REF, future: 1 }).toJSON(), REF);
  });

  const invalid: { name: string; input: unknown; field: string }[] = [
    { name: "not an object", input: 42, field: "objectRef" },
    { name: "an array", input: [REF], field: "objectRef" },
    { name: "bad JSON text", input: "{", field: "objectRef" },
    ...(["endpoint", "key", "version", "size", "sha256"] as const).map((field) => {
      const input: Record<string, unknown> = { ...REF };
      delete input[field];
      return { name: `missing ${field}`, input, field };
    }),
    { name: "a numeric endpoint", input: { ...REF, endpoint: 7422 }, field: "endpoint" },
    { name: "a non-URL endpoint", input: { ...REF, endpoint: "not a url" }, field: "endpoint" },
    { name: "an ftp endpoint", input: { ...REF, endpoint: "ftp://h:1" }, field: "endpoint" },
    { name: "an endpoint with credentials", input: { ...REF, endpoint: "http://u:p@h:1" }, field: "endpoint" },
    { name: "an endpoint with a query", input: { ...REF, endpoint: "http://h:1/?a=1" }, field: "endpoint" },
    { name: "a traversal key", input: { ...REF, key: "app/../x" }, field: "key" },
    { name: "a two-part key", input: { ...REF, key: "app/s1" }, field: "key" },
    { name: "an absolute key", input: { ...REF, key: "/app/s1/x" }, field: "key" },
    { name: "version 0", input: { ...REF, version: 0 }, field: "version" },
    { name: "a fractional version", input: { ...REF, version: 1.5 }, field: "version" },
    { name: "a string version", input: { ...REF, version: "1" }, field: "version" },
    { name: "a negative size", input: { ...REF, size: -1 }, field: "size" },
    { name: "an unsafe size", input: { ...REF, size: 2 ** 53 }, field: "size" },
    { name: "a short sha256", input: { ...REF, sha256: "abc" }, field: "sha256" },
    { name: "an uppercase sha256", input: { ...REF, sha256: SHA.toUpperCase() }, field: "sha256" },
  ];
  for (const c of invalid) {
    test(`from() refuses ${c.name}, naming ${c.field}`, () => {
      assert.throws(
        () => ObjectRef.from(c.input),
        (e: unknown) => e instanceof InvalidArgumentError && e.field === c.field && e.message.startsWith(`${c.field}:`),
      );
    });
  }

  test("encodeObjectRef / decodeObjectRef round-trip", () => {
    const r = ref({ endpoint: "https://cache.example:443", size: 0 });
    const back = decodeObjectRef(encodeObjectRef(r));
    assert.ok(back instanceof ObjectRef);
    assert.deepEqual(back.toJSON(), r.toJSON());
  });

  test("a plain object with the fields of a ref stays a plain object", () => {
    const back = roundTrip({ ...REF });
    assert.ok(!(back instanceof ObjectRef));
    assert.deepStrictEqual(back, { ...REF });
    assert.throws(() => decodeObjectRef(encodeValue({ ...REF })), isCodecError("bytes", "ObjectRef"));
  });

  test("a ref made by another copy of the SDK in the process still encodes as a ref", async () => {
    // A second module instance of object-ref.ts: a fresh class, as a second installed copy of the SDK would have.
    const other = (await import(`../src/objects/object-ref.js?copy=${Date.now()}`)) as { ObjectRef: typeof ObjectRef };
    assert.notEqual(other.ObjectRef, ObjectRef);
    const foreign = other.ObjectRef.from(REF);
    const back = roundTrip({ input: foreign });
    assert.ok(back.input instanceof ObjectRef);
    assert.deepEqual(back.input.toJSON(), REF);
    assert.deepEqual(decodeObjectRef(encodeObjectRef(foreign)).toJSON(), REF);
  });

  test("encodeObjectRef refuses a plain object", () => {
    assert.throws(
      () => encodeObjectRef({ ...REF } as unknown as ObjectRef),
      (e: unknown) => e instanceof InvalidArgumentError && e.field === "ref",
    );
  });
});
