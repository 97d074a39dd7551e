import * as fs from "node:fs";

/**
 * Waits for a supervised child's ready line: the first match of `pattern` in what its log file
 * (where its stdout goes) gained after `offset`, the file's size when the child was started (the
 * log is appended to across runs). Re-reads on each change of the file, not on a timer. Rejects
 * after `timeoutMs`.
 *
 * @example
 * const offset = logSize(logFile); // before starting the child
 * const [, endpoint] = await readyLine(logFile, offset, /listening at (\S+) /, 20_000);
 */
export async function readyLine(
  logFile: string,
  offset: number,
  pattern: RegExp,
  timeoutMs: number,
): Promise<RegExpMatchArray> {
  const watcher = fs.watch(logFile);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = (): void => {
        const match = readFrom(logFile, offset).match(pattern);
        if (match) resolve(match);
      };
      timer = setTimeout(() => reject(new Error(`no ready line in ${logFile} within ${timeoutMs} ms`)), timeoutMs);
      watcher.on("change", check);
      watcher.on("error", reject);
      check();
    });
  } finally {
    clearTimeout(timer);
    watcher.close();
  }
}

/** The size of `file` now (0 if it does not exist yet): where a child about to start will write. */
export function logSize(file: string): number {
  return fs.statSync(file, { throwIfNoEntry: false })?.size ?? 0;
}

function readFrom(file: string, offset: number): string {
  const fd = fs.openSync(file, "r");
  try {
    const length = Math.max(0, fs.fstatSync(fd).size - offset);
    const buffer = Buffer.alloc(length);
    fs.readSync(fd, buffer, 0, length, offset);
    return buffer.toString("utf8");
  } finally {
    fs.closeSync(fd);
  }
}
