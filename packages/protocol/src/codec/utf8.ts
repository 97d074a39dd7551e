/** Short ASCII strings are cheaper to build in JS than through a native call. */
const SHORT_STRING = 16;

/** Decodes UTF-8 `buf[start, end)`; invalid sequences become U+FFFD, as in Buffer#toString. */
export function decodeUtf8(buf: Buffer, start: number, end: number): string {
  if (end - start >= SHORT_STRING) return buf.toString("utf8", start, end);
  let s = "";
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    if (c >= 0x80) return buf.toString("utf8", start, end);
    s += String.fromCharCode(c);
  }
  return s;
}
