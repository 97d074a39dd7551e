import {
  fromBinary,
  type DescMessage,
  type DescMethodStreaming,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Code, ConnectError, createHandlerContext, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type * as http2 from "node:http2";
import { toConnectError } from "../errors.js";
import { envelope, EnvelopeReader } from "./envelopes.js";
import { isGrpcContentType, webHeaders } from "./grpc-headers.js";
import { drained, Inbox } from "./inbox.js";

export interface StreamServerOptions {
  /** Largest message this side accepts, bytes. */
  readMaxBytes: number;
  /**
   * The error that refuses a call before it runs (a missing token), or undefined to let it run;
   * `path` is the method's, `/package.Service/Method`.
   */
  authorize?: (headers: http2.IncomingHttpHeaders, path: string) => ConnectError | undefined;
}

type Http2Handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void;
type StreamImpl = (input: unknown, ctx: HandlerContext) => AsyncIterable<MessageInitShape<DescMessage>>;

interface Route {
  method: DescMethodStreaming;
  impl: StreamImpl;
}

const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Serves the streaming methods of services (server-streaming and bidi) as
 * gRPC over HTTP/2, moving each message with a few plain callbacks; every
 * other request (unary calls, Connect and gRPC-web clients, compressed
 * streams) goes to the next handler, Connect's. The implementations are the
 * same `ServiceImpl` objects the Connect router serves, so both paths run
 * one code. The stream client (`streamCaller`) explains why.
 *
 * @example
 * const streams = new StreamRoutes({ readMaxBytes }).add(kiln.Agent, agentImpl);
 * http2.createServer(streams.handler(connectNodeAdapter({ routes })));
 */
export class StreamRoutes {
  private readonly routes = new Map<string, Route>();

  constructor(private readonly options: StreamServerOptions) {}

  add<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): this {
    for (const method of service.methods) {
      if (method.methodKind !== "server_streaming" && method.methodKind !== "bidi_streaming") continue;
      const fn: unknown = (impl as Record<string, unknown>)[method.localName];
      if (typeof fn !== "function") continue;
      this.routes.set(`/${service.typeName}/${method.name}`, {
        method: method as DescMethodStreaming,
        impl: (fn as StreamImpl).bind(impl),
      });
    }
    return this;
  }

  /** A request handler that serves these streams and hands everything else to `next`. */
  handler(next: Http2Handler): Http2Handler {
    return (req, res) => {
      const route = this.routes.get(req.url);
      const encoding = req.headers["grpc-encoding"];
      if (
        !route ||
        req.method !== "POST" ||
        !isGrpcContentType(req.headers["content-type"]) ||
        (encoding !== undefined && encoding !== "identity")
      ) {
        next(req, res);
        return;
      }
      void new ServerStream(route, req, res, this.options).run();
    };
  }
}

class ServerStream {
  private readonly abort = new AbortController();
  private readonly input: Inbox<MessageShape<DescMessage>>;

  constructor(
    private readonly route: Route,
    private readonly req: http2.Http2ServerRequest,
    private readonly res: http2.Http2ServerResponse,
    private readonly options: StreamServerOptions,
  ) {
    // A handler that stops reading early leaves the rest of the request unread, as Connect does.
    this.input = new Inbox(req, () => undefined);
  }

  async run(): Promise<void> {
    const { method } = this.route;
    const { req, res } = this;
    const refusal = this.options.authorize?.(req.headers, req.url);
    const timeout = parseTimeout(headerValue(req.headers["grpc-timeout"]), MAX_TIMEOUT_MS);
    const ctx = createHandlerContext({
      service: method.parent,
      method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: req.url,
      requestSignal: this.abort.signal,
      requestHeader: webHeaders(req.headers),
      ...(timeout.timeoutMs !== undefined ? { timeoutMs: timeout.timeoutMs } : {}),
    });
    res.on("close", () => {
      if (!res.writableEnded) this.abort.abort(new ConnectError("the client cancelled the call", Code.Canceled));
    });
    this.abort.signal.addEventListener("abort", () => this.input.fail(this.abort.signal.reason), { once: true });
    res.writeHead(200, { "content-type": req.headers["content-type"] });
    if (refusal ?? timeout.error) {
      this.end(ctx, refusal ?? timeout.error);
      return;
    }
    this.read();
    try {
      const output =
        method.methodKind === "server_streaming"
          ? this.route.impl(await this.single(), ctx)
          : this.route.impl(this.input, ctx);
      for await (const m of output) {
        if (this.abort.signal.aborted) break;
        if (!res.write(envelope(method.output, m))) await drained(res);
      }
      // A request the server could not read, or a passed deadline, ends the call with that error even
      // when the handler ended quietly (the context's signal carries both).
      this.end(ctx, ctx.signal.aborted ? ConnectError.from(ctx.signal.reason) : undefined);
    } catch (err) {
      this.end(ctx, toConnectError(err));
    } finally {
      ctx.abort();
    }
  }

  private read(): void {
    const reader = new EnvelopeReader(this.options.readMaxBytes);
    const schema = this.route.method.input;
    this.req.on("data", (chunk: Buffer) => {
      try {
        for (const bytes of reader.push(chunk)) this.input.push(parse(schema, bytes));
      } catch (err) {
        this.abort.abort(ConnectError.from(err, Code.InvalidArgument));
      }
    });
    this.req.on("end", () => {
      if (reader.partial)
        this.abort.abort(new ConnectError("the request ended inside a message", Code.InvalidArgument));
      else this.input.end();
    });
  }

  /** The one request message of a server-streaming call. */
  private async single(): Promise<MessageShape<DescMessage>> {
    let first: MessageShape<DescMessage> | undefined;
    let count = 0;
    for await (const m of this.input) {
      first ??= m;
      count++;
    }
    if (!first || count > 1)
      throw new ConnectError(
        `expected one request message for a server-streaming call, got ${count}`,
        Code.InvalidArgument,
      );
    return first;
  }

  /** Sends the status trailers; nothing once the client is gone. */
  private end(ctx: HandlerContext, err: ConnectError | undefined): void {
    const { res } = this;
    if (res.writableEnded || res.stream.destroyed) return;
    const trailers: Record<string, string> = {};
    setTrailerStatus(new Headers(ctx.responseTrailer), err).forEach((value, key) => (trailers[key] = value));
    res.addTrailers(trailers);
    res.end();
  }
}

/** A request message, or INVALID_ARGUMENT naming the type it is not. */
function parse(schema: DescMessage, bytes: Uint8Array): MessageShape<DescMessage> {
  try {
    return fromBinary(schema, bytes);
  } catch (err) {
    throw new ConnectError(
      `the request is not a valid ${schema.typeName} message (${err instanceof Error ? err.message : String(err)})`,
      Code.InvalidArgument,
    );
  }
}

function headerValue(value: string | string[] | undefined): string | null {
  return Array.isArray(value) ? (value[0] ?? null) : (value ?? null);
}
