import { InvalidArgumentError } from "@kiln/protocol";
import { CacheHeader, encodePartHeader, PART_HEADER_BYTES, PARTS_CONTENT_TYPE } from "@kiln/protocol/cache";
import type * as http from "node:http";
import type { RouteRequest, RouteResponse } from "./exchange.js";
import { pipeline } from "node:stream/promises";
import { RangeNotSatisfiableError } from "./http-errors.js";
import type { ObjectStat, Segment, SegmentBytes, StoredObject } from "./storage/backend.js";
import { readSegment } from "./storage/segments.js";

/** Parts bodies up to this size that are all in memory are sent as one buffer. */
const SINGLE_WRITE_LIMIT = 1 << 20;

interface PartRef {
  version: number;
  length: number;
  bytes: SegmentBytes;
  offset: number;
}

/**
 * Answers GET or HEAD for an object: 304 when the client holds the current
 * version, only the missing deltas when it holds an older one, else the
 * whole object (raw base bytes with Range support, or parts). Calls
 * `release` once the response is over, however it ends.
 */
export function sendObject(req: RouteRequest, res: RouteResponse, object: StoredObject, release: () => void): void {
  res.once("close", release);
  const { stat, segments } = object;
  const raw = stat.deltas === 0;
  const headers: http.OutgoingHttpHeaders = {
    [CacheHeader.version]: stat.version,
    [CacheHeader.sha256]: stat.sha256,
    [CacheHeader.size]: stat.size,
    etag: `"${stat.version}"`,
    [CacheHeader.format]: raw ? "raw" : "parts",
  };
  const have = heldVersion(req);
  if (have === stat.version) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  if (raw) sendRaw(req, res, stat, segments[0]!.bytes, headers);
  else sendParts(req, res, stat, segments, have, headers);
}

function sendRaw(
  req: RouteRequest,
  res: RouteResponse,
  stat: ObjectStat,
  bytes: SegmentBytes,
  headers: http.OutgoingHttpHeaders,
): void {
  headers["content-type"] = "application/octet-stream";
  headers["accept-ranges"] = "bytes";
  const range = parseRange(req.headers.range, stat.size);
  if (range === "unsatisfiable") {
    headers["content-range"] = `bytes */${stat.size}`;
    throw new RangeNotSatisfiableError(req.headers.range!, stat.size, headers);
  }
  let status = 200;
  let start = 0;
  let length = stat.size;
  if (range) {
    status = 206;
    start = range.start;
    length = range.end - range.start + 1;
    headers["content-range"] = `bytes ${range.start}-${range.end}/${stat.size}`;
  }
  headers["content-length"] = length;
  res.writeHead(status, headers);
  if (req.method === "HEAD") res.end();
  else if (bytes.kind === "memory") res.end(bytes.data.subarray(start, start + length));
  else stream(res, readSegment(bytes, start, length));
}

function sendParts(
  req: RouteRequest,
  res: RouteResponse,
  stat: ObjectStat,
  segments: Segment[],
  have: number | undefined,
  headers: http.OutgoingHttpHeaders,
): void {
  const incremental = have !== undefined && have >= stat.baseVersion && have < stat.version;
  if (incremental) headers[CacheHeader.deltaFrom] = have;
  const parts = partsAfter(segments, incremental ? have : stat.baseVersion - 1);
  let length = 0;
  let inMemory = true;
  for (const p of parts) {
    length += PART_HEADER_BYTES + p.length;
    inMemory &&= p.bytes.kind === "memory";
  }
  headers["content-type"] = PARTS_CONTENT_TYPE;
  headers["content-length"] = length;
  res.writeHead(200, headers);
  if (req.method === "HEAD") res.end();
  else if (inMemory && length <= SINGLE_WRITE_LIMIT) res.end(joinParts(parts, length));
  else stream(res, partChunks(parts));
}

/** Every part with a version above `after`, in version order, with where its bytes are. */
function partsAfter(segments: Segment[], after: number): PartRef[] {
  const parts: PartRef[] = [];
  for (const s of segments) {
    let offset = 0;
    s.lengths.forEach((length, i) => {
      const version = s.firstVersion + i;
      if (version > after) parts.push({ version, length, bytes: s.bytes, offset });
      offset += length;
    });
  }
  return parts;
}

function joinParts(parts: PartRef[], length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let at = 0;
  for (const p of parts) {
    out.set(encodePartHeader(p.version, p.length), at);
    at += PART_HEADER_BYTES;
    if (p.bytes.kind === "memory") p.bytes.data.copy(out, at, p.offset, p.offset + p.length);
    at += p.length;
  }
  return out;
}

async function* partChunks(parts: PartRef[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) {
    yield encodePartHeader(p.version, p.length);
    yield* readSegment(p.bytes, p.offset, p.length);
  }
}

function stream(res: RouteResponse, source: AsyncIterable<Uint8Array>): void {
  // A client that goes away ends the pipeline; the 'close' handler releases the object.
  pipeline(source, res).catch(() => res.destroy());
}

/** The version the client says it holds: `kiln-have-version: N` or `if-none-match: "N"`. */
function heldVersion(req: RouteRequest): number | undefined {
  const have = req.headers[CacheHeader.haveVersion];
  if (typeof have === "string") {
    if (!/^\d+$/.test(have))
      throw new InvalidArgumentError(CacheHeader.haveVersion, `"${have}" is not a version number`);
    return Number(have);
  }
  const tag = /^\s*(?:W\/)?"(\d+)"\s*$/.exec(req.headers["if-none-match"] ?? "");
  return tag ? Number(tag[1]) : undefined;
}

/**
 * One `bytes=` range (a-b, a-, -n) clamped to the object; undefined when the
 * header is absent or not a single well-formed range (then the whole object is sent).
 */
function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | "unsatisfiable" | undefined {
  const m = header ? /^bytes=(\d*)-(\d*)$/.exec(header.trim()) : null;
  if (!m || (m[1] === "" && m[2] === "")) return undefined;
  if (m[1] === "") {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === "" ? size - 1 : Number(m[2]);
  if (start >= size) return "unsatisfiable";
  if (end < start) return undefined;
  return { start, end: Math.min(end, size - 1) };
}
