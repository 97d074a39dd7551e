import * as net from "node:net";
import * as tls from "node:tls";
import { ResponseParser, ResponseSyntaxError, type WholeResponse } from "./response-parser.js";

/**
 * A few keep-alive HTTP/1.1 connections to one server, with requests
 * pipelined on them: requests issued in the same tick leave in one write,
 * and responses are read as they stream back. Measured on loopback, this
 * costs a fraction of node:http's per-request CPU on both client and
 * server, which is what lets one client do tens of thousands of small
 * object operations per second. For small bodies only: streamed uploads and
 * downloads use node:http.
 */

export interface PooledRequest {
  method: string;
  /** Path and query, already safe to put on the request line. */
  path: string;
  /** Lower-case header names; host, the pool's fixed headers and content-length are added. */
  headers?: Record<string, string>;
  body?: Uint8Array;
}

export interface PoolOptions {
  host: string;
  port: number;
  secure: boolean;
  /** Sent with every request, e.g. `{ authorization: "Bearer ..." }`. */
  fixedHeaders?: Record<string, string>;
  /** Connections opened at most. */
  maxConnections: number;
  /** A connection with requests outstanding and no bytes arriving for this long is failed with `onTimeout`. */
  timeoutMs: number;
  onTimeout(req: PooledRequest): Error;
  /** Turns a socket error into what callers see. */
  onNetworkError(err: Error): Error;
}

/** Closing idle connections before the server's keep-alive timeout (Node's default is 5 s) avoids racing it. */
const IDLE_CLOSE_MS = 4_000;

interface Pending {
  request: PooledRequest;
  resolve(res: WholeResponse): void;
  reject(err: Error): void;
  /** GET and HEAD may be sent again when the connection dies before any byte of their response. */
  retried: boolean;
}

class Connection {
  readonly pending: Pending[] = [];
  private readonly socket: net.Socket;
  private readonly parser: ResponseParser;
  private corked = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private dead = false;
  /** True once this connection answered something: a failure after that is not a refused connection. */
  private answered = false;

  constructor(
    private readonly pool: PipelinedPool,
    private readonly options: PoolOptions,
  ) {
    this.socket = options.secure
      ? tls.connect({
          host: options.host,
          port: options.port,
          ...(net.isIP(options.host) ? {} : { servername: options.host }),
        })
      : net.connect({ host: options.host, port: options.port });
    this.socket.setNoDelay(true);
    this.parser = new ResponseParser(
      () => this.pending[0]?.request.method !== "HEAD",
      (res) => this.onResponse(res),
    );
    this.socket.on("data", (chunk: Buffer) => {
      try {
        this.parser.push(chunk);
      } catch (err) {
        this.fail(err instanceof ResponseSyntaxError ? new Error(`bad HTTP response: ${err.message}`) : (err as Error));
      }
    });
    this.socket.on("end", () => {
      const complete = this.parser.end();
      this.fail(new Error(complete ? "connection closed by the server" : "socket hang up"), complete);
    });
    this.socket.on("error", (err) => this.fail(err));
    this.socket.on("close", () => this.fail(new Error("socket hang up")));
    this.socket.on("timeout", () => {
      const first = this.pending[0];
      if (first) this.fail(this.options.onTimeout(first.request), false, true);
    });
  }

  get outstanding(): number {
    return this.pending.length;
  }

  send(p: Pending): void {
    if (this.pending.length === 0) this.busy();
    this.pending.push(p);
    const { request } = p;
    let head = `${request.method} ${request.path} HTTP/1.1\r\n${this.pool.fixedHead}`;
    for (const name in request.headers) head += `${name}: ${request.headers[name]}\r\n`;
    if (request.body) head += `content-length: ${request.body.byteLength}\r\n`;
    else if (request.method !== "GET" && request.method !== "HEAD") head += "content-length: 0\r\n";
    head += "\r\n";
    // Everything sent in this tick leaves in one write.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(head, "latin1");
    if (request.body && request.body.byteLength > 0) this.socket.write(request.body);
  }

  close(): void {
    this.dead = true;
    clearTimeout(this.idleTimer);
    this.socket.destroy();
  }

  private onResponse(res: WholeResponse): void {
    this.answered = true;
    const p = this.pending.shift();
    if (!p) return this.fail(new Error("response without a request"));
    if (this.pending.length === 0) this.idle();
    if (res.closes) this.fail(new Error("connection closed by the server"), true);
    p.resolve(res);
  }

  private busy(): void {
    clearTimeout(this.idleTimer);
    this.socket.ref();
    this.socket.setTimeout(this.options.timeoutMs);
  }

  private idle(): void {
    this.socket.setTimeout(0);
    // An idle pool must not keep the process alive.
    this.socket.unref();
    this.idleTimer = setTimeout(() => {
      this.close();
      this.pool.forget(this);
    }, IDLE_CLOSE_MS);
    this.idleTimer.unref();
  }

  /**
   * Ends the connection and settles what is still waiting on it. Requests
   * that got no byte of a response are sent again elsewhere when that is
   * safe (GET/HEAD, once); the rest fail, because the server may or may not
   * have applied them.
   */
  private fail(err: Error, cleanEnd = false, timedOut = false): void {
    if (this.dead && this.pending.length === 0) return;
    this.close();
    this.pool.forget(this);
    const waiting = this.pending.splice(0);
    const startedResponse = !this.parser.idle;
    waiting.forEach((p, i) => {
      const untouched = !(i === 0 && startedResponse);
      const safe = p.request.method === "GET" || p.request.method === "HEAD";
      if (!timedOut && untouched && safe && !p.retried && (this.answered || cleanEnd)) {
        p.retried = true;
        this.pool.dispatch(p);
      } else p.reject(timedOut ? err : this.options.onNetworkError(err));
    });
  }
}

/**
 * @example
 * const pool = new PipelinedPool({ host: "127.0.0.1", port: 7422, secure: false, maxConnections: 4, timeoutMs: 30_000,
 *   onTimeout: () => new Error("timeout"), onNetworkError: (e) => e });
 * const res = await pool.request({ method: "GET", path: "/v1/health" });
 */
export class PipelinedPool {
  /** The header lines every request carries. */
  readonly fixedHead: string;
  private readonly connections: Connection[] = [];
  private closed = false;

  constructor(private readonly options: PoolOptions) {
    const host = net.isIPv6(options.host) ? `[${options.host}]` : options.host;
    this.fixedHead = `host: ${host}:${options.port}\r\n`;
    for (const [name, value] of Object.entries(options.fixedHeaders ?? {})) this.fixedHead += `${name}: ${value}\r\n`;
  }

  request(request: PooledRequest): Promise<WholeResponse> {
    return new Promise((resolve, reject) => this.dispatch({ request, resolve, reject, retried: false }));
  }

  /** Sends on the least loaded connection, opening another while under maxConnections and all are busy. */
  dispatch(p: Pending): void {
    if (this.closed) return p.reject(this.options.onNetworkError(new Error("the client was closed")));
    let best: Connection | undefined;
    for (const c of this.connections) if (!best || c.outstanding < best.outstanding) best = c;
    if (!best || (best.outstanding > 0 && this.connections.length < this.options.maxConnections)) {
      best = new Connection(this, this.options);
      this.connections.push(best);
    }
    best.send(p);
  }

  forget(connection: Connection): void {
    const i = this.connections.indexOf(connection);
    if (i >= 0) this.connections.splice(i, 1);
  }

  /** Closes every connection; requests still waiting fail. */
  close(): void {
    this.closed = true;
    for (const c of this.connections.splice(0)) c.close();
  }
}
