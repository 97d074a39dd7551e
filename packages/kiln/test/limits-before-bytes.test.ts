import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { startCli, type CliProcess } from "./cli-helpers.js";
import { tempDir } from "./support/control-plane.js";

const MB = 1024 * 1024;
const HUGE = 200 * MB;

/** Resident memory of a process, bytes (VmRSS in /proc/PID/status). */
function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]) * 1024;
}

interface Sent {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** Body bytes written before the answer came (the rest never was). */
  sent: number;
}

/**
 * POSTs up to `total` bytes of zeros to `url`, 1 MiB at a time, declaring the length unless `chunked`,
 * and stops sending as soon as the answer arrives.
 */
function post(url: string, total: number, headers: http.OutgoingHttpHeaders, chunked = false): Promise<Sent> {
  return new Promise((resolve, reject) => {
    const chunk = Buffer.alloc(MB);
    let sent = 0;
    let answered = false;
    const req = http.request(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...(chunked ? {} : { "content-length": total }), ...headers },
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer from ${url} within 60 s`)), 60_000);
    req.on("response", (res) => {
      answered = true;
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => {
        clearTimeout(timer);
        req.destroy();
        resolve({ status: res.statusCode!, headers: res.headers, body, sent });
      });
    });
    req.on("error", (err) => {
      if (!answered) reject(err);
    });
    const write = (): void => {
      while (!answered && sent < total) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once("drain", write);
      }
      if (!answered) req.end();
    };
    write();
  });
}

async function startServer(args: string[]): Promise<{ server: CliProcess; grpc: string; json: string }> {
  const server = startCli(["server", "--data-dir", tempDir("limits"), "--port", "0", ...args]);
  const m = await server.waitFor(/listening on (http:\/\/\S+) \(gRPC\/HTTP2\) and (http:\/\/\S+) \(JSON/, 30_000);
  return { server, grpc: m[1]!, json: m[2]! };
}

describe("a kiln server refuses oversized and unauthenticated bodies before reading them", () => {
  describe("without a token", () => {
    let server: CliProcess;
    let json: string;
    before(async () => ({ server, json } = await startServer([])));
    after(async () => server?.stop());

    it("refuses 3 × 200 MB task requests at their declared length, and its memory stays where it was", async () => {
      const url = `${json}/flame.v1.Frontend/CreateTask`;
      await post(url, 2 * MB, {});
      const before = rssBytes(server.child.pid!);
      for (let i = 0; i < 3; i++) {
        const r = await post(url, HUGE, {});
        assert.equal(r.status, 413, r.body);
        assert.equal(r.headers["kiln-error-code"], "RESOURCE_EXHAUSTED");
        assert.match(
          JSON.parse(r.body).message,
          /request body of 209715200 bytes is over the 16842752-byte limit of \/flame\.v1\.Frontend\/CreateTask \(--max-task-bytes \+ 64 KiB\)/,
        );
        assert.ok(r.sent < HUGE, `the server answered only after ${r.sent} bytes`);
      }
      const grown = rssBytes(server.child.pid!) - before;
      assert.ok(grown < 20 * MB, `RSS grew by ${(grown / MB).toFixed(1)} MB`);
    });

    it("stops a body without a declared length at the route's limit", async () => {
      const before = rssBytes(server.child.pid!);
      for (let i = 0; i < 3; i++) {
        const r = await post(`${json}/flame.v1.Frontend/RegisterApplication`, HUGE, {}, true);
        assert.equal(JSON.parse(r.body).code, "resource_exhausted", r.body);
        assert.ok(r.sent < HUGE, `the server answered only after ${r.sent} bytes`);
      }
      const grown = rssBytes(server.child.pid!) - before;
      assert.ok(grown < 20 * MB, `RSS grew by ${(grown / MB).toFixed(1)} MB`);
    });

    it("holds batch routes to --max-request-bytes (64 MiB by default), not to the task limit", async () => {
      const r = await post(`${json}/kiln.v1.Frontend/CreateTasks`, 65 * MB, {});
      assert.equal(r.status, 413);
      assert.match(JSON.parse(r.body).message, /67108864-byte limit .*\(--max-request-bytes\)/);
    });
  });

  describe("malformed bodies", () => {
    let server: CliProcess;
    let grpc: string;
    let json: string;
    before(async () => ({ server, grpc, json } = await startServer([])));
    after(async () => server?.stop());
    // Field 0 is no field: "illegal tag" to any protobuf reader.
    const garbage = Buffer.from([0x00, 0x01, 0x02, 0x03]);

    /** A request over HTTP/2 with `body`; resolves with its response headers and trailers. */
    function h2(path: string, contentType: string, body: Buffer) {
      return new Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders }>(
        (resolve, reject) => {
          const session = http2.connect(grpc);
          const stream = session.request({
            ":method": "POST",
            ":path": path,
            "content-type": contentType,
            te: "trailers",
          });
          let headers: http2.IncomingHttpHeaders = {};
          let trailers: http2.IncomingHttpHeaders = {};
          stream.on("response", (h) => (headers = h));
          stream.on("trailers", (t) => (trailers = t));
          stream.on("data", () => {});
          stream.on("end", () => {
            session.close();
            resolve({ headers, trailers });
          });
          stream.on("error", reject);
          stream.end(body);
        },
      );
    }
    const grpcFrame = (message: Buffer) => {
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(message.length, 1);
      return Buffer.concat([prefix, message]);
    };

    it("garbage protobuf on the Connect JSON port is INVALID_ARGUMENT naming the message type", async () => {
      const res = await fetch(`${json}/flame.v1.Frontend/CreateTask`, {
        method: "POST",
        headers: { "content-type": "application/proto" },
        body: garbage,
      });
      assert.equal(res.status, 400);
      assert.equal(res.headers.get("kiln-error-code"), "INVALID_ARGUMENT");
      const body = (await res.json()) as { code: string; message: string };
      assert.equal(body.code, "invalid_argument");
      assert.match(body.message, /the request is not a valid flame\.v1\.CreateTaskRequest message \(.*illegal tag/);
    });

    it("malformed JSON is INVALID_ARGUMENT too", async () => {
      const res = await fetch(`${json}/flame.v1.Frontend/CreateTask`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{not json",
      });
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { code: string }).code, "invalid_argument");
    });

    it("garbage protobuf in a unary gRPC call is INVALID_ARGUMENT naming the message type", async () => {
      const { trailers, headers } = await h2("/flame.v1.Frontend/GetSession", "application/grpc", grpcFrame(garbage));
      const status = trailers["grpc-status"] ?? headers["grpc-status"];
      const message = decodeURIComponent(String(trailers["grpc-message"] ?? headers["grpc-message"]));
      assert.equal(status, "3", message);
      assert.match(message, /not a valid flame\.v1\.GetSessionRequest message/);
    });

    it("garbage protobuf on a gRPC stream is INVALID_ARGUMENT naming the message type", async () => {
      const { trailers } = await h2("/kiln.v1.Agent/Connect", "application/grpc", grpcFrame(garbage));
      assert.equal(trailers["grpc-status"], "3");
      assert.match(decodeURIComponent(String(trailers["grpc-message"])), /not a valid kiln\.v1\.AgentMessage message/);
    });
  });

  describe("with a token", () => {
    let server: CliProcess;
    let grpc: string;
    let json: string;
    before(async () => ({ server, grpc, json } = await startServer(["--token", "s3cret"])));
    after(async () => server?.stop());

    it("answers 3 × 200 MB unauthenticated requests 401 at once, without reading them", async () => {
      const url = `${json}/flame.v1.Frontend/CreateTask`;
      await post(url, MB, {});
      const before = rssBytes(server.child.pid!);
      for (let i = 0; i < 3; i++) {
        const r = await post(url, HUGE, { authorization: "Bearer wrong" });
        assert.equal(r.status, 401, r.body);
        assert.equal(JSON.parse(r.body).code, "unauthenticated");
        assert.ok(r.sent < HUGE, `the server answered only after ${r.sent} bytes`);
      }
      const grown = rssBytes(server.child.pid!) - before;
      assert.ok(grown < 20 * MB, `RSS grew by ${(grown / MB).toFixed(1)} MB`);
    });

    it("refuses an unauthenticated gRPC stream over HTTP/2 with UNAUTHENTICATED before any message", async () => {
      const session = http2.connect(grpc);
      try {
        const stream = session.request({
          ":method": "POST",
          ":path": "/kiln.v1.Agent/Connect",
          "content-type": "application/grpc+proto",
          te: "trailers",
        });
        const headers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
          stream.once("response", resolve);
          stream.once("error", reject);
        });
        assert.equal(headers[":status"], 200);
        assert.equal(headers["grpc-status"], "16");
        assert.match(decodeURIComponent(String(headers["grpc-message"])), /missing or invalid token/);
        stream.destroy();
      } finally {
        session.close();
      }
    });

    it("accepts the right token on the same route (then the limit applies)", async () => {
      const r = await post(`${json}/flame.v1.Frontend/CreateTask`, HUGE, { authorization: "Bearer s3cret" });
      assert.equal(r.status, 413, r.body);
    });
  });
});
