import {
  fromBinary,
  type DescMessage,
  type DescMethodStreaming,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Code, ConnectError, type StreamResponse, type Transport } from "@connectrpc/connect";
import { codeFromHttpStatus, findTrailerError } from "@connectrpc/connect/protocol-grpc";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import * as http2 from "node:http2";
import { envelope, EnvelopeReader } from "./envelopes.js";
import { GRPC_CONTENT_TYPE, isGrpcContentType, webHeaders } from "./grpc-headers.js";
import { drained, Inbox } from "./inbox.js";

export interface StreamCallOptions {
  /** Largest message this side accepts, bytes. */
  readMaxBytes: number;
  /** Headers sent on every stream (the cluster token). */
  header?: Record<string, string>;
}

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM, NGHTTP2_ENHANCE_YOUR_CALM } = http2.constants;

/**
 * gRPC streaming calls over the connections of an Http2SessionManager,
 * moving each message with a few plain callbacks. Connect's own transport
 * passes every message through a chain of async iterables, which measured
 * at about half the round trip of a message on an open stream; the
 * protocol rules (status trailers, error details, HTTP status mapping)
 * stay Connect's.
 *
 * @example
 * const transport: Transport = { unary: grpc.unary, stream: streamCaller(sessionManager, { readMaxBytes }) };
 */
export function streamCaller(sessionManager: Http2SessionManager, options: StreamCallOptions): Transport["stream"] {
  return (method, signal, timeoutMs, header, input) =>
    Promise.resolve(new StreamCall(sessionManager, options, method, input, signal, timeoutMs, header).response);
}

class StreamCall<I extends DescMessage, O extends DescMessage> {
  readonly response: StreamResponse<I, O>;
  private readonly output: Inbox<MessageShape<O>>;
  private readonly reader: EnvelopeReader;
  private readonly header = new Headers();
  private readonly trailer = new Headers();
  private h2: http2.ClientHttp2Stream | undefined;
  private statusSeen = false;
  private done = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly onAbort: () => void;

  constructor(
    private readonly sessionManager: Http2SessionManager,
    options: StreamCallOptions,
    private readonly method: DescMethodStreaming<I, O>,
    input: AsyncIterable<MessageInitShape<I>>,
    private readonly signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: Parameters<Transport["stream"]>[3],
  ) {
    this.reader = new EnvelopeReader(options.readMaxBytes);
    this.output = new Inbox(
      { pause: () => this.h2?.pause(), resume: () => this.h2?.resume() },
      // A reader that stops early cancels the call.
      () => this.fail(new ConnectError("the reader stopped reading", Code.Canceled)),
    );
    this.response = {
      stream: true,
      service: method.parent,
      method,
      header: this.header,
      trailer: this.trailer,
      message: this.output,
    };
    this.onAbort = () => this.fail(abortError(signal?.reason));
    if (signal?.aborted) {
      this.onAbort();
      return;
    }
    signal?.addEventListener("abort", this.onAbort, { once: true });
    const headers: http2.OutgoingHttpHeaders = {
      "content-type": GRPC_CONTENT_TYPE,
      te: "trailers",
      "user-agent": "kiln-sdk",
      ...options.header,
    };
    if (header) new Headers(header).forEach((value, key) => (headers[key] = value));
    if (timeoutMs !== undefined) {
      if (timeoutMs <= 0) {
        this.fail(deadlineError());
        return;
      }
      headers["grpc-timeout"] = `${Math.ceil(timeoutMs)}m`;
      this.timer = setTimeout(() => this.fail(deadlineError()), timeoutMs);
    }
    void this.open(headers, input);
  }

  private async open(headers: http2.OutgoingHttpHeaders, input: AsyncIterable<MessageInitShape<I>>): Promise<void> {
    let h2: http2.ClientHttp2Stream;
    try {
      h2 = await this.sessionManager.request(
        "POST",
        `/${this.method.parent.typeName}/${this.method.name}`,
        headers,
        {},
      );
    } catch (err) {
      this.fail(ConnectError.from(err, Code.Unavailable));
      return;
    }
    if (this.done) {
      h2.close(NGHTTP2_CANCEL);
      return;
    }
    this.h2 = h2;
    h2.on("response", (h) => this.onResponse(h));
    h2.on("data", (chunk: Buffer) => this.onData(chunk));
    h2.on("trailers", (t) => this.onTrailers(t));
    h2.on("error", (err) => this.fail(ConnectError.from(err, Code.Unavailable)));
    h2.on("close", () => this.onClose());
    await this.send(h2, input);
  }

  private async send(h2: http2.ClientHttp2Stream, input: AsyncIterable<MessageInitShape<I>>): Promise<void> {
    const schema = this.method.input;
    try {
      for await (const m of input) {
        if (this.done) return;
        if (!h2.write(envelope(schema, m))) await drained(h2);
      }
      if (!this.done) h2.end();
    } catch (err) {
      this.fail(ConnectError.from(err));
    }
  }

  private onResponse(headers: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader): void {
    webHeaders(headers, this.header);
    const status = headers[":status"] ?? 0;
    if (status !== 200) {
      this.fail(new ConnectError(`HTTP ${status}`, codeFromHttpStatus(status), this.header));
      return;
    }
    // A "trailers-only" answer: the status comes in the headers and no body follows.
    if (this.header.has("grpc-status")) {
      this.statusSeen = true;
      const err = findTrailerError(this.header);
      if (err) this.fail(err);
      return;
    }
    if (!isGrpcContentType(headers["content-type"]))
      this.fail(new ConnectError(`unexpected content type ${headers["content-type"]}`, Code.Internal, this.header));
  }

  private onData(chunk: Buffer): void {
    if (this.done) return;
    this.sessionManager.notifyResponseByteRead(this.h2!);
    try {
      for (const bytes of this.reader.push(chunk)) this.output.push(fromBinary(this.method.output, bytes));
    } catch (err) {
      this.fail(ConnectError.from(err, Code.Internal));
    }
  }

  private onTrailers(trailers: http2.IncomingHttpHeaders): void {
    webHeaders(trailers, this.trailer);
    this.statusSeen = true;
    const err = findTrailerError(this.trailer);
    if (err) this.fail(err);
  }

  private onClose(): void {
    if (this.done) return;
    const code = this.h2!.rstCode;
    if (code !== undefined && code !== NGHTTP2_NO_ERROR) this.fail(resetError(code));
    else if (!this.statusSeen) this.fail(new ConnectError("the stream ended without a gRPC status", Code.Internal));
    else if (this.reader.partial) this.fail(new ConnectError("the stream ended inside a message", Code.Internal));
    else this.finish();
  }

  private finish(): void {
    this.done = true;
    this.cleanup();
    this.output.end();
  }

  private fail(err: ConnectError): void {
    if (this.done) return;
    this.done = true;
    this.cleanup();
    this.output.fail(err);
    if (this.h2 && !this.h2.closed) this.h2.close(NGHTTP2_CANCEL);
  }

  private cleanup(): void {
    clearTimeout(this.timer);
    this.signal?.removeEventListener("abort", this.onAbort);
  }
}

function abortError(reason: unknown): ConnectError {
  return reason instanceof ConnectError ? reason : ConnectError.from(reason ?? "the call was aborted", Code.Canceled);
}

function deadlineError(): ConnectError {
  return new ConnectError("the operation timed out", Code.DeadlineExceeded);
}

/** The status of a stream the peer (or a proxy) reset, as gRPC clients report it. */
function resetError(rstCode: number): ConnectError {
  switch (rstCode) {
    case NGHTTP2_REFUSED_STREAM:
      return new ConnectError("the server refused the stream", Code.Unavailable);
    case NGHTTP2_CANCEL:
      return new ConnectError("the stream was cancelled", Code.Canceled);
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return new ConnectError("the server asked to slow down (ENHANCE_YOUR_CALM)", Code.ResourceExhausted);
    default:
      return new ConnectError(`the stream was reset (HTTP/2 error ${rstCode})`, Code.Unavailable);
  }
}
