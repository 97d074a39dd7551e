import { InvalidArgumentError } from "@kiln/protocol";
import type { Hash } from "node:crypto";
import * as fs from "node:fs";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { BodyTarget } from "./backend.js";
import { ObjectTooLargeError } from "./errors.js";

/** Disk space shared by all writers of a backend; `take` throws StorageFullError when it would go over. */
export interface DiskQuota {
  take(bytes: number): void;
  give(bytes: number): void;
}

/** A request body, fully received and hashed, not yet part of any object. */
export interface ReceivedBody {
  size: number;
  /** Hex digest of the hash the receiver was given (for a patch, the chained sha). */
  sha256: string;
  /** sha256 of the body bytes alone, when asked for. */
  bodySha256?: string;
  content: { kind: "memory"; data: Buffer } | { kind: "file"; tempPath: string };
  /**
   * Drops the body: gives its disk quota back and deletes its temp file. Resolves once the file is
   * gone, so a refusal answered after it leaves nothing behind; never rejects.
   */
  discard(): Promise<void>;
}

export interface ReceiveOptions {
  target: BodyTarget;
  hash: Hash;
  /** Also hash the bytes alone (when `hash` is chained from a previous version). */
  bodyHash?: Hash;
  /** The announced content-length: a body that ends short of it is rejected. */
  expectedLength?: number;
  maxBytes?: number;
}

/**
 * Streams `source` into memory (up to the target's limit) or a temp file,
 * hashing as it goes, with backpressure. If the source fails or is cut
 * short, the temp file is removed and nothing is returned.
 *
 * @example
 * const body = await receiveBody(req, { target, hash: createHash("sha256"), expectedLength: 1000 });
 */
export async function receiveBody(
  source: AsyncIterable<Buffer> | Buffer,
  options: ReceiveOptions,
): Promise<ReceivedBody> {
  const { expectedLength, target, maxBytes } = options;
  const small =
    expectedLength !== undefined &&
    expectedLength <= target.memoryLimit &&
    (maxBytes === undefined || expectedLength <= maxBytes);
  let body: ReceivedBody;
  if (Buffer.isBuffer(source)) body = small ? inMemory(source, options) : await stream([source], options);
  else body = small && source instanceof Readable ? await collect(source, options) : await stream(source, options);
  if (options.expectedLength !== undefined && body.size !== options.expectedLength) {
    await body.discard();
    throw new InvalidArgumentError(
      "content-length",
      `announced ${options.expectedLength} bytes but the body has ${body.size}`,
    );
  }
  return body;
}

async function stream(
  source: AsyncIterable<Buffer> | Iterable<Buffer>,
  options: ReceiveOptions,
): Promise<ReceivedBody> {
  const sink = new BodySink(options);
  await pipeline(source, sink);
  return sink.result();
}

/** A body that is whole in memory (a batched sub-request, or one gathered by `collect`): only hashed. */
function inMemory(data: Buffer, options: ReceiveOptions): ReceivedBody {
  options.hash.update(data);
  options.bodyHash?.update(data);
  return {
    size: data.length,
    sha256: options.hash.digest("hex"),
    bodySha256: options.bodyHash?.digest("hex"),
    content: { kind: "memory", data },
    discard: () => Promise.resolve(),
  };
}

/**
 * The small-body path: a body announced to fit in memory is gathered with
 * plain listeners, which costs a fraction of a pipeline per request.
 */
function collect(source: Readable, options: ReceiveOptions): Promise<ReceivedBody> {
  return new Promise((resolve, reject) => {
    // A request aborted while it waited (e.g. for its key) has already emitted 'close'.
    if (source.destroyed) return reject(new Error("the request ended before its body was complete"));
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
    };
    const onEnd = () => {
      cleanup();
      resolve(inMemory(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size), options));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onClose = () => onError(new Error("the request ended before its body was complete"));
    const cleanup = () => {
      source.off("data", onData);
      source.off("end", onEnd);
      source.off("error", onError);
      source.off("close", onClose);
    };
    source.on("data", onData);
    source.once("end", onEnd);
    source.once("error", onError);
    source.once("close", onClose);
  });
}

class BodySink extends Writable {
  private chunks: Buffer[] = [];
  private size = 0;
  private readonly memoryLimit: number;
  private tempPath?: string;
  private file?: fs.promises.FileHandle;
  /** The file operation in flight, so destroy() cleans up only after it. */
  private busy: Promise<void> = Promise.resolve();
  private quotaTaken = 0;
  /** Set once the file is complete: from then on the temp file belongs to result(). */
  private finished = false;

  constructor(private readonly options: ReceiveOptions) {
    super({ highWaterMark: 1 << 20 });
    const { expectedLength, target } = options;
    // A body announced larger than the memory limit goes to its file from the first byte.
    this.memoryLimit = expectedLength !== undefined && expectedLength > target.memoryLimit ? -1 : target.memoryLimit;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.accept([chunk], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.accept(
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    const file = this.file;
    if (!file) {
      this.finished = true;
      return callback();
    }
    this.busy = (async () => {
      if (this.options.target.sync) await file.sync();
      await file.close();
      this.file = undefined;
      this.finished = true;
    })();
    this.busy.then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.tempPath || (this.finished && !error)) return callback(error);
    this.busy
      .catch(() => undefined)
      .then(() => this.file?.close())
      .catch(() => undefined)
      .then(() => this.removeTemp())
      .then(() => callback(error), callback);
  }

  result(): ReceivedBody {
    const { hash, bodyHash, target } = this.options;
    const common = { size: this.size, sha256: hash.digest("hex"), bodySha256: bodyHash?.digest("hex") };
    if (!this.tempPath) {
      const data = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
      return { ...common, content: { kind: "memory", data }, discard: () => Promise.resolve() };
    }
    const tempPath = this.tempPath;
    const taken = this.quotaTaken;
    return {
      ...common,
      content: { kind: "file", tempPath },
      discard: () => {
        target.quota?.give(taken);
        return fs.promises.rm(tempPath, { force: true }).catch(() => undefined);
      },
    };
  }

  private accept(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    const { hash, bodyHash, maxBytes } = this.options;
    for (const c of chunks) {
      hash.update(c);
      bodyHash?.update(c);
      this.size += c.length;
    }
    if (maxBytes !== undefined && this.size > maxBytes) return callback(new ObjectTooLargeError(maxBytes));
    if (!this.tempPath && this.size <= this.memoryLimit) {
      for (const c of chunks) this.chunks.push(c);
      return callback();
    }
    this.busy = this.writeToFile(chunks);
    this.busy.then(() => callback(), callback);
  }

  private async writeToFile(chunks: Buffer[]): Promise<void> {
    if (!this.tempPath) {
      this.tempPath = this.options.target.files.tempPath();
      chunks = [...this.chunks, ...chunks];
      this.chunks = [];
      this.file = await fs.promises.open(this.tempPath, "w");
    }
    const bytes = chunks.reduce((n, c) => n + c.length, 0);
    this.options.target.quota?.take(bytes);
    this.quotaTaken += bytes;
    await writeAll(this.file!, chunks);
  }

  private async removeTemp(): Promise<void> {
    this.options.target.quota?.give(this.quotaTaken);
    this.quotaTaken = 0;
    await fs.promises.rm(this.tempPath!, { force: true });
  }
}

/** writev until every byte is written (a regular file may take less than asked in one call). */
async function writeAll(file: fs.promises.FileHandle, chunks: Buffer[]): Promise<void> {
  let rest = chunks;
  while (rest.length > 0) {
    let { bytesWritten } = await file.writev(rest);
    while (rest.length > 0 && bytesWritten >= rest[0]!.length) {
      bytesWritten -= rest[0]!.length;
      rest = rest.slice(1);
    }
    if (bytesWritten > 0) rest = [rest[0]!.subarray(bytesWritten), ...rest.slice(1)];
  }
}
