import type { CapturedOutput } from "@kiln/protocol/runner";
import { AsyncLocalStorage } from "node:async_hooks";
import { BoundedBytes } from "../bounded-bytes.js";

/** The output of one call while it runs; writes after `closed` go to the real streams. */
interface CallOutput {
  stdout: BoundedBytes;
  stderr: BoundedBytes;
  closed: boolean;
}

type Write = NodeJS.WriteStream["write"];

/**
 * Captures what each call writes to stdout and stderr (console included),
 * separately for calls running at the same time: the call's async context
 * (AsyncLocalStorage) says whose output a write is. Each stream keeps at
 * most `limit` bytes per call and counts the rest. Writes outside any call,
 * or after the call has ended, reach the real streams.
 *
 * @example
 * const capture = new OutputCapture(64 * 1024);
 * const { result, output } = await capture.run(() => userFunction(...args));
 */
export class OutputCapture {
  private readonly storage = new AsyncLocalStorage<CallOutput>();
  private installed = false;

  constructor(private readonly limit: number) {}

  /** Runs `fn` with its output captured; resolves once it settles, with what it returned or threw. */
  async run<T>(
    fn: () => T | Promise<T>,
  ): Promise<{ result: PromiseSettledResult<Awaited<T>>; output: CapturedOutput }> {
    this.install();
    const call: CallOutput = {
      stdout: new BoundedBytes(this.limit),
      stderr: new BoundedBytes(this.limit),
      closed: false,
    };
    const settled = await this.storage.run(call, async () => {
      try {
        return { status: "fulfilled", value: await fn() } as const;
      } catch (reason) {
        return { status: "rejected", reason } as const;
      }
    });
    call.closed = true;
    return {
      result: settled as PromiseSettledResult<Awaited<T>>,
      output: {
        stdout: call.stdout.text(),
        stderr: call.stderr.text(),
        stdoutTruncated: call.stdout.truncated,
        stderrTruncated: call.stderr.truncated,
      },
    };
  }

  /** Patches process.stdout/stderr.write once; console writes through them. */
  private install(): void {
    if (this.installed) return;
    this.installed = true;
    this.patch(process.stdout, (call) => call.stdout);
    this.patch(process.stderr, (call) => call.stderr);
  }

  private patch(stream: NodeJS.WriteStream, pick: (call: CallOutput) => BoundedBytes): void {
    const original = stream.write.bind(stream) as (...args: unknown[]) => boolean;
    const storage = this.storage;
    const write = function (this: unknown, chunk: unknown, ...rest: unknown[]): boolean {
      const call = storage.getStore();
      if (!call || call.closed || (typeof chunk !== "string" && !(chunk instanceof Uint8Array)))
        return original(chunk, ...rest);
      const encoding = typeof rest[0] === "string" ? (rest[0] as BufferEncoding) : undefined;
      pick(call).add(typeof chunk === "string" ? Buffer.from(chunk, encoding) : Buffer.from(chunk));
      const callback = rest.find((r): r is (err?: Error | null) => void => typeof r === "function");
      if (callback) process.nextTick(callback);
      return true;
    };
    stream.write = write as Write;
  }
}
