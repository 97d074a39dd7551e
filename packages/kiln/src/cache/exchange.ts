import type * as http from "node:http";
import { Writable } from "node:stream";

/**
 * What the cache routes read from a request. An http.IncomingMessage is one;
 * so is a sub-request of a batch (BufferedRequest), which is why the routes
 * ask for no more than this.
 */
export interface RouteRequest extends AsyncIterable<Buffer> {
  readonly url?: string | undefined;
  readonly method?: string | undefined;
  readonly headers: http.IncomingHttpHeaders;
  /** The whole body has been read. */
  readonly complete: boolean;
  /** The whole body, when it is already in memory (a batched sub-request). */
  readonly body?: Buffer | undefined;
}

/** What the cache routes do to a response: an http.ServerResponse, or a BufferedResponse. */
export interface RouteResponse extends NodeJS.WritableStream {
  readonly headersSent: boolean;
  readonly destroyed: boolean;
  writeHead(status: number, headers?: http.OutgoingHttpHeaders): unknown;
  destroy(): unknown;
}

/** A request held in memory: one sub-request of a batch. Not a stream: the routes take its `body` as it is. */
export class BufferedRequest implements RouteRequest {
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer | undefined;
  readonly complete = true;

  constructor(
    readonly method: string,
    readonly url: string,
    headers: Record<string, string>,
    body: Uint8Array | undefined,
  ) {
    this.body = body && Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    this.headers = body ? { ...headers, "content-length": String(body.byteLength) } : headers;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    if (this.body && this.body.byteLength > 0) yield this.body;
  }
}

/**
 * A response kept in memory, up to `limit` body bytes; past that it is
 * destroyed unfinished (the client then sends the request on its own).
 * `done` resolves when the route has finished with it, however it ended.
 */
export class BufferedResponse extends Writable implements RouteResponse {
  status = 0;
  headers: Record<string, string> = {};
  headersSent = false;
  readonly done: Promise<void>;
  private readonly chunks: Buffer[] = [];
  private length = 0;

  constructor(private readonly limit: number) {
    super();
    this.done = new Promise((resolve) => {
      this.once("finish", resolve);
      this.once("close", resolve);
    });
    // Going over the limit destroys the response on purpose (the batch answers SEND_ALONE): no crash.
    this.on("error", () => undefined);
  }

  writeHead(status: number, headers: http.OutgoingHttpHeaders = {}): this {
    // An announced length over the limit is refused before any of its body is read.
    if (Number(headers["content-length"] ?? 0) > this.limit) this.destroy();
    this.status = status;
    for (const [name, value] of Object.entries(headers))
      if (value !== undefined)
        this.headers[name.toLowerCase()] = Array.isArray(value) ? value.join(", ") : String(value);
    this.headersSent = true;
    return this;
  }

  get body(): Buffer {
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.length += chunk.length;
    if (this.length > this.limit) {
      callback(new Error(`a batched response is limited to ${this.limit} bytes`));
      return;
    }
    this.chunks.push(chunk);
    callback();
  }
}
