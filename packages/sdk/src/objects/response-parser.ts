/**
 * Incremental HTTP/1.1 response parser for pipelined connections: feed it
 * socket chunks, it emits whole responses in order. Bodies framed by
 * content-length, chunked encoding or the end of the connection; no body
 * for HEAD, 1xx, 204 and 304. Single-chunk bodies are zero-copy slices.
 */

/** A complete response; header names are lower case, repeated headers joined with ", ". */
export interface WholeResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** The server will close the connection after this response. */
  closes: boolean;
}

const MAX_HEAD_BYTES = 64 * 1024;
const CRLF = Buffer.from("\r\n");
const HEAD_END = Buffer.from("\r\n\r\n");
const EMPTY = Buffer.alloc(0);

type State =
  | { kind: "head" }
  | { kind: "length"; remaining: number }
  | { kind: "chunk-size" }
  | { kind: "chunk-data"; remaining: number }
  | { kind: "chunk-end" }
  | { kind: "trailers" }
  | { kind: "until-close" };

/** Thrown when the bytes are not HTTP/1.1 the parser understands; the connection is unusable after it. */
export class ResponseSyntaxError extends Error {}

/**
 * @example
 * const parser = new ResponseParser(() => pending[0].method !== "HEAD", (res) => pending.shift().resolve(res));
 * socket.on("data", (chunk) => parser.push(chunk));
 * socket.on("end", () => parser.end());
 */
export class ResponseParser {
  private state: State = { kind: "head" };
  /** Bytes of a head or chunk-size line that spans chunks. */
  private partial: Buffer = EMPTY;
  private current: WholeResponse | undefined;
  private bodyParts: Buffer[] = [];
  private bodyLength = 0;

  constructor(
    /** Whether the next response has a body (false for a HEAD request). */
    private readonly nextHasBody: () => boolean,
    private readonly onResponse: (res: WholeResponse) => void,
  ) {}

  push(chunk: Buffer): void {
    let data = this.partial.length > 0 ? Buffer.concat([this.partial, chunk]) : chunk;
    this.partial = EMPTY;
    while (data.length > 0) data = this.step(data);
  }

  /** The connection ended: completes a close-delimited body; true when no response was cut short. */
  end(): boolean {
    if (this.state.kind === "until-close") {
      this.finish();
      return true;
    }
    return this.state.kind === "head" && this.partial.length === 0;
  }

  /** True between responses (nothing of the next one received yet). */
  get idle(): boolean {
    return this.state.kind === "head" && this.partial.length === 0;
  }

  /** Consumes what it can of `data`; returns the rest. */
  private step(data: Buffer): Buffer {
    switch (this.state.kind) {
      case "head": {
        const end = data.indexOf(HEAD_END);
        if (end < 0) return this.keepPartial(data, "response head");
        this.startResponse(data.toString("latin1", 0, end));
        return data.subarray(end + HEAD_END.length);
      }
      case "length": {
        const n = Math.min(this.state.remaining, data.length);
        this.addBody(data.subarray(0, n));
        this.state.remaining -= n;
        if (this.state.remaining === 0) this.finish();
        return data.subarray(n);
      }
      case "chunk-size": {
        const end = data.indexOf(CRLF);
        if (end < 0) return this.keepPartial(data, "chunk size");
        const size = parseInt(data.toString("latin1", 0, end).split(";")[0]!.trim(), 16);
        if (!Number.isSafeInteger(size) || size < 0) throw new ResponseSyntaxError("bad chunk size");
        this.state = size === 0 ? { kind: "trailers" } : { kind: "chunk-data", remaining: size };
        return data.subarray(end + CRLF.length);
      }
      case "chunk-data": {
        const n = Math.min(this.state.remaining, data.length);
        this.addBody(data.subarray(0, n));
        this.state.remaining -= n;
        if (this.state.remaining === 0) this.state = { kind: "chunk-end" };
        return data.subarray(n);
      }
      case "chunk-end": {
        if (data.length < CRLF.length) return this.keepPartial(data, "chunk end");
        if (data[0] !== 13 || data[1] !== 10) throw new ResponseSyntaxError("chunk not followed by CRLF");
        this.state = { kind: "chunk-size" };
        return data.subarray(CRLF.length);
      }
      case "trailers": {
        const end = data.indexOf(CRLF);
        if (end < 0) return this.keepPartial(data, "trailer");
        if (end === 0) this.finish();
        return data.subarray(end + CRLF.length);
      }
      case "until-close":
        this.addBody(data);
        return EMPTY;
    }
  }

  private keepPartial(data: Buffer, what: string): Buffer {
    if (data.length > MAX_HEAD_BYTES) throw new ResponseSyntaxError(`${what} longer than ${MAX_HEAD_BYTES} bytes`);
    this.partial = Buffer.from(data); // a copy: the chunk it slices may be large
    return EMPTY;
  }

  private startResponse(head: string): void {
    const lines = head.split("\r\n");
    const statusLine = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? "");
    if (!statusLine) throw new ResponseSyntaxError(`not an HTTP/1.1 status line: ${JSON.stringify(lines[0])}`);
    const status = Number(statusLine[1]);
    const headers: Record<string, string> = {};
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(":");
      if (colon <= 0) throw new ResponseSyntaxError(`bad header line: ${JSON.stringify(line)}`);
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
    if (status < 200) return; // 100 Continue and friends: the real response follows
    const closes = /(^|,)\s*close\s*(,|$)/i.test(headers.connection ?? "");
    this.current = { status, headers, body: EMPTY, closes };
    this.bodyParts = [];
    this.bodyLength = 0;
    if (!this.nextHasBody() || status === 204 || status === 304) return this.finish();
    if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      this.state = { kind: "chunk-size" };
      return;
    }
    const length = headers["content-length"];
    if (length === undefined) {
      this.current.closes = true;
      this.state = { kind: "until-close" };
      return;
    }
    const remaining = Number(length);
    if (!Number.isSafeInteger(remaining) || remaining < 0)
      throw new ResponseSyntaxError(`bad content-length ${length}`);
    if (remaining === 0) return this.finish();
    this.state = { kind: "length", remaining };
  }

  private addBody(bytes: Buffer): void {
    this.bodyParts.push(bytes);
    this.bodyLength += bytes.length;
  }

  private finish(): void {
    const res = this.current!;
    if (this.bodyParts.length === 1) res.body = this.bodyParts[0]!;
    else if (this.bodyParts.length > 1) res.body = Buffer.concat(this.bodyParts, this.bodyLength);
    this.current = undefined;
    this.bodyParts = [];
    this.state = { kind: "head" };
    this.onResponse(res);
  }
}
