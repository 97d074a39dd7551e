import { create, fromBinary, toBinary, type DescService, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type ServiceImpl, type Transport } from "@connectrpc/connect";
import {
  connectNodeAdapter,
  createConnectTransport,
  createGrpcTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";
import { ErrorCode, NotFoundError, toKilnError } from "../src/errors.js";
import { createClusterTransport } from "../src/transport/cluster-transport.js";
import { translateErrors } from "../src/transport/translate-errors.js";
import { flame, kiln } from "../src/proto/index.js";
import { EnvelopeReader } from "../src/transport/envelopes.js";
import { StreamRoutes } from "../src/transport/stream-server.js";
import { untilChanged } from "../../../test/support/until.js";
import { within } from "../../../test/support/within.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What the test services saw, for assertions on the server side. */
interface Seen {
  calls: number;
  aborted: unknown[];
  /** Emits "change" when either of the above does. */
  changes: EventEmitter;
}

/** Instance/Invoke answers every task with its own input; WatchSession streams `count` updates, or fails. */
function services(seen: Seen): {
  instance: Partial<ServiceImpl<typeof kiln.Instance>>;
  frontend: Partial<ServiceImpl<typeof kiln.Frontend>>;
} {
  return {
    instance: {
      async *invoke(requests) {
        seen.calls++;
        seen.changes.emit("change");
        for await (const r of requests)
          yield create(kiln.InvokeResponseSchema, {
            outcomes: r.tasks.map((t) => ({
              taskId: t.taskId,
              result: { returnCode: 0, ...(t.input ? { output: t.input } : {}) },
            })),
          });
      },
    },
    frontend: {
      async *watchSession(req, ctx) {
        seen.calls++;
        seen.changes.emit("change");
        ctx.signal.addEventListener("abort", () => {
          seen.aborted.push(ctx.signal.reason);
          seen.changes.emit("change");
        });
        if (req.sessionId === "missing") throw new NotFoundError("session", "missing");
        if (req.sessionId === "silent") {
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          return;
        }
        const count = Number(req.sessionId);
        for (let i = 1; i <= count; i++)
          yield { updates: [{ taskId: String(i), state: flame.TaskState.Succeed, output: new Uint8Array(1024) }] };
      },
    },
  };
}

interface TestServer {
  endpoint: string;
  seen: Seen;
}

const servers: http2.Http2Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

/** A real HTTP/2 server: the fast stream path in front of Connect (or Connect alone), on loopback. */
async function startServer(options: { fastPath: boolean; token?: string; readMaxBytes?: number }): Promise<TestServer> {
  const seen: Seen = { calls: 0, aborted: [], changes: new EventEmitter() };
  const { instance, frontend } = services(seen);
  const readMaxBytes = options.readMaxBytes ?? 16 * 1024 * 1024;
  const connectHandler = connectNodeAdapter({
    routes: (router) => {
      router.service(kiln.Instance, instance);
      router.service(kiln.Frontend, frontend);
    },
    readMaxBytes,
    // As in the control plane: typed errors keep their code on Connect's path too.
    interceptors: [translateErrors()],
  });
  const token = options.token;
  const handler = options.fastPath
    ? new StreamRoutes({
        readMaxBytes,
        ...(token
          ? {
              authorize: (h: http2.IncomingHttpHeaders) =>
                h.authorization === `Bearer ${token}` ? undefined : new ConnectError("no token", Code.Unauthenticated),
            }
          : {}),
      })
        .add(kiln.Instance, instance)
        .add(kiln.Frontend, frontend)
        .handler(connectHandler)
    : connectHandler;
  const server = http2.createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** The three kinds of client a server meets: Kiln's own, Connect's gRPC and Connect's own protocol. */
function clients(endpoint: string, token?: string): { name: string; transport: Transport; close(): void }[] {
  const kilnTransport = createClusterTransport({ endpoint, ...(token ? { token } : {}) });
  const grpcSessions = new Http2SessionManager(endpoint);
  const connectSessions = new Http2SessionManager(endpoint);
  return [
    { name: "kiln", transport: kilnTransport.transport, close: kilnTransport.close },
    {
      name: "connect-grpc",
      transport: createGrpcTransport({ baseUrl: endpoint, sessionManager: grpcSessions }),
      close: () => grpcSessions.abort(),
    },
    {
      name: "connect-protocol",
      transport: createConnectTransport({ baseUrl: endpoint, httpVersion: "2", sessionManager: connectSessions }),
      close: () => connectSessions.abort(),
    },
  ];
}

/** Sends `n` one-task requests, one message each, and collects every answer. */
async function echo(transport: Transport, n: number): Promise<string[]> {
  async function* requests() {
    for (let i = 0; i < n; i++)
      yield create(kiln.InvokeRequestSchema, {
        tasks: [{ taskId: String(i), sessionId: "s", input: new TextEncoder().encode(`input ${i}`) }],
      });
  }
  const outputs: string[] = [];
  for await (const r of createClient(kiln.Instance, transport).invoke(requests()))
    for (const o of r.outcomes) outputs.push(new TextDecoder().decode(o.result?.output));
  return outputs;
}

async function collect(
  transport: Transport,
  sessionId: string,
  options: { signal?: AbortSignal; timeoutMs?: number } = {},
) {
  const updates: string[] = [];
  for await (const m of createClient(kiln.Frontend, transport).watchSession({ sessionId }, options))
    updates.push(...m.updates.map((u) => u.taskId));
  return updates;
}

const encodeWatch = (sessionId: string) =>
  toBinary(kiln.WatchSessionRequestSchema, create(kiln.WatchSessionRequestSchema, { sessionId }));

const expectedEcho = (n: number) => Array.from({ length: n }, (_, i) => `input ${i}`);

describe("gRPC streams (StreamRoutes and the SDK's stream client)", () => {
  test("bidi and server streams answer every client kind, in order, on the fast path and on Connect alone", async () => {
    for (const fastPath of [true, false]) {
      const server = await startServer({ fastPath });
      for (const c of clients(server.endpoint)) {
        try {
          assert.deepEqual(await within(echo(c.transport, 200), 10_000, `${c.name} echo`), expectedEcho(200), c.name);
          const updates = await within(collect(c.transport, "50"), 10_000, `${c.name} watch`);
          assert.deepEqual(
            updates,
            Array.from({ length: 50 }, (_, i) => String(i + 1)),
            c.name,
          );
        } finally {
          c.close();
        }
      }
      assert.equal(server.seen.calls, 6);
    }
  });

  test("grpc-js, a gRPC stack of its own, gets bidi and server streams, statuses and metadata", async () => {
    const server = await startServer({ fastPath: true });
    const methods = (service: DescService, names: string[]) =>
      Object.fromEntries(
        names.map((name) => {
          const m = service.methods.find((x) => x.name === name)!;
          return [
            name,
            {
              path: `/${service.typeName}/${name}`,
              requestStream: m.methodKind === "bidi_streaming",
              responseStream: true,
              requestSerialize: (v: Message) => Buffer.from(toBinary(m.input, v)),
              requestDeserialize: (b: Buffer) => fromBinary(m.input, b),
              responseSerialize: (v: Message) => Buffer.from(toBinary(m.output, v)),
              responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
            },
          ];
        }),
      ) as grpc.ServiceDefinition;
    const address = server.endpoint.replace("http://", "");
    const Instance = grpc.makeGenericClientConstructor(methods(kiln.Instance, ["Invoke"]), "Instance");
    const Frontend = grpc.makeGenericClientConstructor(methods(kiln.Frontend, ["WatchSession"]), "Frontend");
    const instance = new Instance(address, grpc.credentials.createInsecure());
    const frontend = new Frontend(address, grpc.credentials.createInsecure());
    try {
      const echoed = await within(
        new Promise<string[]>((resolve, reject) => {
          const call = (instance as unknown as Record<string, () => grpc.ClientDuplexStream<Message, Message>>)
            .Invoke!();
          const out: string[] = [];
          call.on("data", (r: kiln.InvokeResponse) => out.push(...r.outcomes.map((o) => o.taskId)));
          call.on("end", () => resolve(out));
          call.on("error", reject);
          for (let i = 0; i < 20; i++)
            call.write(create(kiln.InvokeRequestSchema, { tasks: [{ taskId: String(i), sessionId: "s" }] }));
          call.end();
        }),
        10_000,
        "grpc-js Invoke",
      );
      assert.deepEqual(
        echoed,
        Array.from({ length: 20 }, (_, i) => String(i)),
      );
      const watch = (sessionId: string) =>
        within(
          new Promise<{ ids: string[]; error?: grpc.ServiceError }>((resolve) => {
            const call = (frontend as unknown as Record<string, (m: Message) => grpc.ClientReadableStream<Message>>)
              .WatchSession!(create(kiln.WatchSessionRequestSchema, { sessionId }));
            const ids: string[] = [];
            call.on("data", (m: kiln.WatchSessionResponse) => ids.push(...m.updates.map((u) => u.taskId)));
            call.on("end", () => resolve({ ids }));
            call.on("error", (error: grpc.ServiceError) => resolve({ ids, error }));
          }),
          10_000,
          "grpc-js WatchSession",
        );
      assert.deepEqual((await watch("3")).ids, ["1", "2", "3"]);
      const { error } = await watch("missing");
      assert.equal(error?.code, grpc.status.NOT_FOUND);
      assert.deepEqual(error?.metadata.get("kiln-error-code"), [ErrorCode.NotFound]);
    } finally {
      instance.close();
      frontend.close();
    }
  });

  test("a handler's typed error reaches every client kind with its stable code", async () => {
    const server = await startServer({ fastPath: true });
    for (const c of clients(server.endpoint)) {
      try {
        await assert.rejects(within(collect(c.transport, "missing"), 10_000, c.name), (err: unknown) => {
          const e = toKilnError(err);
          assert.equal(e.code, ErrorCode.NotFound, `${c.name}: ${e.message}`);
          assert.match(e.message, /session "missing" not found|missing/);
          return true;
        });
      } finally {
        c.close();
      }
    }
  });

  test("a stream without the token is refused with UNAUTHENTICATED before its handler runs", async () => {
    const server = await startServer({ fastPath: true, token: "s3cret" });
    const without = createClusterTransport({ endpoint: server.endpoint });
    const withToken = createClusterTransport({ endpoint: server.endpoint, token: "s3cret" });
    try {
      await assert.rejects(within(collect(without.transport, "3"), 10_000, "refused"), (err: unknown) => {
        assert.equal(ConnectError.from(err).code, Code.Unauthenticated);
        return true;
      });
      assert.equal(server.seen.calls, 0);
      assert.deepEqual(await within(collect(withToken.transport, "3"), 10_000, "allowed"), ["1", "2", "3"]);
    } finally {
      without.close();
      withToken.close();
    }
  });

  test("a message over the server's readMaxBytes fails the call with RESOURCE_EXHAUSTED", async () => {
    const server = await startServer({ fastPath: true, readMaxBytes: 1024 });
    const t = createClusterTransport({ endpoint: server.endpoint });
    async function* big() {
      yield create(kiln.InvokeRequestSchema, { tasks: [{ taskId: "1", sessionId: "s", input: new Uint8Array(4096) }] });
    }
    try {
      await assert.rejects(
        within(
          (async () => {
            for await (const r of createClient(kiln.Instance, t.transport).invoke(big())) void r;
          })(),
          10_000,
          "oversized request",
        ),
        (err: unknown) => {
          const e = ConnectError.from(err);
          assert.equal(e.code, Code.ResourceExhausted, e.message);
          assert.match(e.message, /4\d{3}.*1024/);
          return true;
        },
      );
    } finally {
      t.close();
    }
  });

  test("aborting the client's signal cancels the call on the server", async () => {
    const server = await startServer({ fastPath: true });
    const t = createClusterTransport({ endpoint: server.endpoint });
    const abort = new AbortController();
    try {
      const watching = collect(t.transport, "silent", { signal: abort.signal });
      await untilChanged(server.seen.changes, () => server.seen.calls > 0, 10_000, "the call to reach the server");
      abort.abort(new ConnectError("stop", Code.Canceled));
      await assert.rejects(within(watching, 10_000, "aborted watch"), (err: unknown) => {
        assert.equal(ConnectError.from(err).code, Code.Canceled);
        return true;
      });
      await untilChanged(
        server.seen.changes,
        () => server.seen.aborted.length > 0,
        10_000,
        "the server noticing the cancel",
      );
    } finally {
      t.close();
    }
  });

  test("a call past its deadline fails with DEADLINE_EXCEEDED", async () => {
    const server = await startServer({ fastPath: true });
    const t = createClusterTransport({ endpoint: server.endpoint });
    try {
      await assert.rejects(
        within(collect(t.transport, "silent", { timeoutMs: 100 }), 10_000, "deadline"),
        (err: unknown) => {
          assert.equal(ConnectError.from(err).code, Code.DeadlineExceeded);
          return true;
        },
      );
    } finally {
      t.close();
    }
  });

  test("a raw gRPC request gets a status for a passed deadline and for a message cut short", async () => {
    const server = await startServer({ fastPath: true });
    /** One request with the given body, half-closed at once; resolves the trailers' grpc-status. */
    const rawCall = (body: Buffer, headers: http2.OutgoingHttpHeaders) =>
      within(
        new Promise<string | undefined>((resolve, reject) => {
          const session = http2.connect(server.endpoint);
          session.on("error", reject);
          const req = session.request({
            ":method": "POST",
            ":path": "/kiln.v1.Frontend/WatchSession",
            "content-type": "application/grpc",
            te: "trailers",
            ...headers,
          });
          req.on("trailers", (t) => resolve(t["grpc-status"] as string | undefined));
          req.on("close", () => {
            resolve(undefined);
            session.close();
          });
          req.on("data", () => undefined);
          req.end(body);
        }),
        10_000,
        "raw call",
      );
    const message = Buffer.from(encodeWatch("silent"));
    const framed = Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]);
    assert.equal(await rawCall(framed, { "grpc-timeout": "100m" }), String(Code.DeadlineExceeded));
    assert.equal(await rawCall(framed.subarray(0, framed.length - 1), {}), String(Code.InvalidArgument));
  });

  test("a reader slower than the server still gets every message, in order", async () => {
    const server = await startServer({ fastPath: true });
    const t = createClusterTransport({ endpoint: server.endpoint });
    try {
      const ids: string[] = [];
      for await (const m of createClient(kiln.Frontend, t.transport).watchSession({ sessionId: "3000" })) {
        ids.push(...m.updates.map((u) => u.taskId));
        // The slow reader is what is under test: stall now and then, long enough for the server to fill the buffers and be held back.
        if (ids.length % 500 === 0) await sleep(50);
      }
      assert.deepEqual(
        ids,
        Array.from({ length: 3000 }, (_, i) => String(i + 1)),
      );
    } finally {
      t.close();
    }
  });
});

describe("EnvelopeReader", () => {
  const frame = (bytes: number[], flags = 0) => {
    const b = Buffer.alloc(5 + bytes.length);
    b[0] = flags;
    b.writeUInt32BE(bytes.length, 1);
    Buffer.from(bytes).copy(b, 5);
    return b;
  };

  test("finds every message however the bytes are split", () => {
    const wire = Buffer.concat([frame([1, 2, 3]), frame([]), frame([9])]);
    for (const size of [1, 2, 4, 7, wire.length]) {
      const reader = new EnvelopeReader(1024);
      const found: number[][] = [];
      for (let i = 0; i < wire.length; i += size)
        for (const m of reader.push(wire.subarray(i, i + size))) found.push([...m]);
      assert.deepEqual(found, [[1, 2, 3], [], [9]], `chunks of ${size}`);
      assert.equal(reader.partial, false);
    }
    const cut = new EnvelopeReader(1024);
    cut.push(frame([1, 2, 3]).subarray(0, 6));
    assert.equal(cut.partial, true);
  });

  test("refuses a compressed message and one over its limit", () => {
    assert.throws(
      () => new EnvelopeReader(1024).push(frame([1], 1)),
      (e: unknown) => {
        assert.equal(ConnectError.from(e).code, Code.Internal);
        return true;
      },
    );
    assert.throws(
      () => new EnvelopeReader(4).push(frame([1, 2, 3, 4, 5]).subarray(0, 5)),
      (e: unknown) => {
        const err = ConnectError.from(e);
        assert.equal(err.code, Code.ResourceExhausted);
        assert.match(err.message, /5 .* 4/);
        return true;
      },
    );
  });
});
