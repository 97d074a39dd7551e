// Packages for the package-delivery tests: tar.gz and zip archives built byte
// by byte (so hostile entries can be made), npm projects with a vendored
// dependency, and loopback servers that serve, count, or stall.
import { createHash } from "node:crypto";
import * as http from "node:http";
import * as net from "node:net";
import { crc32, gzipSync } from "node:zlib";
import { Header, type HeaderData } from "tar";

export interface TarEntry {
  path: string;
  type?: HeaderData["type"];
  body?: string | Buffer;
  linkpath?: string;
  mode?: number;
}

const BLOCK = 512;

/** A .tar.gz with exactly these entries, whatever they are (devices, `../x`, absolute paths, ...). */
export function tarGz(entries: readonly TarEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? "");
    const type = e.type ?? "File";
    const header = Buffer.alloc(BLOCK);
    new Header({
      path: e.path,
      type,
      mode: e.mode ?? (type === "Directory" ? 0o755 : 0o644),
      size: type === "File" ? body.length : 0,
      linkpath: e.linkpath,
      mtime: new Date(0),
      uid: 0,
      gid: 0,
    }).encode(header, 0);
    blocks.push(header);
    if (type === "File" && body.length > 0) blocks.push(body, Buffer.alloc((BLOCK - (body.length % BLOCK)) % BLOCK));
  }
  blocks.push(Buffer.alloc(2 * BLOCK));
  return gzipSync(Buffer.concat(blocks));
}

/** A .tar.gz of text files (paths → contents); `exec` paths get mode 0755. */
export function tarGzFiles(files: Record<string, string | Buffer>, exec: readonly string[] = []): Buffer {
  return tarGz(
    Object.entries(files).map(([path, body]) => ({ path, body, mode: exec.includes(path) ? 0o755 : 0o644 })),
  );
}

export interface ZipEntry {
  name: string;
  body?: string;
  /** Unix mode including the file type bits, e.g. 0o100644, 0o120777 for a symlink (body = target). */
  mode?: number;
}

/** A .zip (stored, no compression) with exactly these entries. */
export function zip(entries: readonly ZipEntry[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, "utf8");
    const body = Buffer.from(e.body ?? "");
    const crc = crc32(body);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x800, 6);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(body.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4); // made by Unix, so the external attributes carry a mode
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0x800, 8);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(body.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(((e.mode ?? 0o100644) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    locals.push(local, name, body);
    centrals.push(central, name);
    offset += local.length + name.length + body.length;
  }
  const centralDir = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(centralDir.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, centralDir, end]);
}

export const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest("hex");

/** An npm package tarball (`package/...`), as `npm pack` makes them. */
export function npmTarball(name: string, version: string, indexJs: string): Buffer {
  return tarGzFiles({
    "package/package.json": JSON.stringify({ name, version, main: "index.js" }),
    "package/index.js": indexJs,
  });
}

/**
 * An application package for the node installer: `index.js` requires the
 * dependency `greet`, vendored as `vendor/greet-1.0.0.tgz` (a `file:`
 * dependency, so npm needs no registry), with a lockfile npm ci accepts.
 * `greetSpec` overrides where the dependency comes from (e.g. a missing file);
 * `greetComment` changes its content, so npm cannot have it cached.
 */
export function nodeAppFiles(
  code: string,
  greetSpec = "file:vendor/greet-1.0.0.tgz",
  greetComment = "",
): Record<string, string | Buffer> {
  const greet = npmTarball("greet", "1.0.0", `module.exports = (who) => "hello " + who;\n${greetComment}\n`);
  const integrity = `sha512-${createHash("sha512").update(greet).digest("base64")}`;
  const manifest = { name: "app", version: "1.0.0", dependencies: { greet: greetSpec } };
  const lock = {
    name: "app",
    version: "1.0.0",
    lockfileVersion: 3,
    requires: true,
    packages: {
      "": manifest,
      "node_modules/greet": { version: "1.0.0", resolved: greetSpec, integrity },
    },
  };
  // The root package's own scripts must not run (the package is already built): if they did, npm ci would fail.
  const withScripts = { ...manifest, scripts: { prepare: "exit 7", postinstall: "exit 7" } };
  return {
    "package.json": JSON.stringify(withScripts, null, 2),
    "package-lock.json": JSON.stringify(lock, null, 2),
    "vendor/greet-1.0.0.tgz": greet,
    "index.js": code,
  };
}

/** A loopback HTTP server serving bytes by path, counting requests; `delayMs` holds each response back. */
export class PackageServer {
  readonly requests = new Map<string, number>();
  readonly files = new Map<string, Buffer>();
  readonly headersSeen: http.IncomingHttpHeaders[] = [];
  delayMs = 0;
  private readonly server: http.Server;

  constructor(private readonly handler?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean) {
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const p = new URL(req.url ?? "/", "http://x").pathname;
    this.requests.set(p, (this.requests.get(p) ?? 0) + 1);
    this.headersSeen.push(req.headers);
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.handler?.(req, res)) return;
    const body = this.files.get(p);
    if (!body) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "NOT_FOUND", message: `nothing at ${p}` }));
      return;
    }
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length });
    res.end(body);
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** A TCP server that accepts connections and never says anything (or only `prefix`). */
export class SilentServer {
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;

  constructor(prefix = "") {
    this.server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => this.sockets.delete(socket));
      if (prefix) socket.write(prefix);
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return (this.server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
