import { encodeValue, isObjectRef } from "@kiln/protocol";
import { ObjectCache } from "@kiln/sdk";
import { TaskFailure, type ServiceHandlers, type SessionContextInfo, type TaskContextInfo } from "@kiln/service";
import {
  type CapturedOutput,
  decodeCall,
  decodeServiceSpec,
  encodeOutput,
  INLINE_LIMIT,
  OUTPUT_CAPTURE_LIMIT,
  RUNNER_FORMAT,
  RUNNER_PACKAGE_ENV,
  runnerKeys,
  type OutputRecord,
} from "@kiln/protocol/runner";
import * as os from "node:os";
import { performance } from "node:perf_hooks";
import { inspect } from "node:util";
import { Binding } from "./bindings.js";
import { ensureDependencies } from "./dependencies.js";
import { ModuleLoader } from "./module-loader.js";
import { OutputCapture } from "./output-capture.js";

const NO_OUTPUT: CapturedOutput = { stdout: "", stderr: "", stdoutTruncated: 0, stderrTruncated: 0 };

/**
 * kiln-run: the service behind every Runner application. Session enter
 * loads the session's export from the installed project (KILN_APP_DIR),
 * after installing its dependencies; each task is one call, whose result or
 * error goes back as an OutputRecord with what the call printed.
 *
 * @example
 * await serve(new RunService().handlers());
 */
export class RunService {
  private readonly loader = new ModuleLoader();
  private readonly capture = new OutputCapture(OUTPUT_CAPTURE_LIMIT);
  /**
   * The session this process is bound to. An executor's service process
   * serves one session at a time (enter, its calls, leave), so one binding is
   * the bound on instances; a new enter replaces it.
   */
  private bound: { sessionId: string; binding: Binding; application: string } | undefined;
  private readonly host = os.hostname();
  private cache: ObjectCache | undefined;

  handlers(): ServiceHandlers {
    return {
      onSessionEnter: (ctx) => this.enter(ctx),
      onTaskInvoke: (task) => this.invoke(task),
      onSessionLeave: () => this.leave(),
    };
  }

  private objects(): ObjectCache {
    this.cache ??= ObjectCache.fromConfig();
    return this.cache;
  }

  private async enter(ctx: SessionContextInfo): Promise<void> {
    const spec = decodeServiceSpec(ctx.commonData ?? new Uint8Array(0));
    const appDir = process.env.KILN_APP_DIR;
    if (!appDir)
      throw new Error("kiln-run needs KILN_APP_DIR: the application must have a package url (use Runner.open)");
    // A Runner opened inside a call reuses this package rather than packing the installed copy.
    if (ctx.application.url) process.env[RUNNER_PACKAGE_ENV] = ctx.application.url;
    const depsDir = await ensureDependencies(appDir, spec.dependencies);
    await this.loader.prepare({ appDir, ...(depsDir ? { depsDir } : {}) });
    const exported = await this.loader.loadExport(appDir, spec.module, spec.export);
    const args = await this.resolveArgs(spec.args);
    const binding = Binding.create(spec, exported, args, {
      cache: this.objects(),
      key: runnerKeys.state(ctx.application.name, ctx.sessionId),
    });
    this.bound = { sessionId: ctx.sessionId, binding, application: ctx.application.name };
  }

  private leave(): void {
    this.bound = undefined;
  }

  /** One call; a throw anywhere becomes an error record sent with the failure. */
  private async invoke(task: TaskContextInfo): Promise<Uint8Array> {
    let output = NO_OUTPUT;
    let durationMs = 0;
    try {
      const entry = this.bound?.sessionId === task.sessionId ? this.bound : undefined;
      if (!entry) throw new Error(`session ${task.sessionId} was not entered on this executor`);
      const call = decodeCall(task.input ?? new Uint8Array(0));
      const args = await this.resolveArgs(call.args);
      const value = await entry.binding.call(call.method, args, async (run) => {
        const started = performance.now();
        const { result, output: printed } = await this.capture.run(run);
        durationMs = performance.now() - started;
        output = printed;
        if (result.status === "rejected") throw result.reason;
        return result.value;
      });
      return await this.encodeResult(entry.application, task, value, output, durationMs);
    } catch (err) {
      const error = toError(err);
      throw new TaskFailure(`${error.name}: ${error.message}`, this.errorRecord(error, output, durationMs));
    }
  }

  /** Top-level ObjectRefs become their values, fetched in parallel from the configured cache only. */
  private resolveArgs(args: unknown[]): Promise<unknown[]> {
    if (!args.some(isObjectRef)) return Promise.resolve(args);
    return Promise.all(args.map((a) => (isObjectRef(a) ? this.objects().getObject(a) : a)));
  }

  /**
   * The OutputRecord with the result inline when it encodes to at most
   * INLINE_LIMIT bytes, else with a ref to it, put in the cache under the task.
   * The whole record is encoded first: when that is small, so is the result,
   * and the common case encodes once.
   */
  private async encodeResult(
    application: string,
    task: TaskContextInfo,
    value: unknown,
    output: CapturedOutput,
    durationMs: number,
  ): Promise<Uint8Array> {
    const record = this.record("output", output, durationMs);
    let inline: Uint8Array;
    try {
      inline = encodeOutput({ ...record, result: value });
    } catch (err) {
      encodeValue(value, { path: "result" }); // throws the same refusal, named after the result rather than the record
      throw err;
    }
    if (inline.byteLength <= INLINE_LIMIT) return inline;
    const encoded = encodeValue(value);
    if (encoded.byteLength <= INLINE_LIMIT) return inline;
    const key = runnerKeys.result(application, task.sessionId, task.taskId);
    return encodeOutput({ ...record, resultRef: await this.objects().putEncoded(key, encoded) });
  }

  private errorRecord(error: Error, output: CapturedOutput, durationMs: number): Uint8Array {
    try {
      return encodeOutput({ ...this.record("error", output, durationMs), error });
    } catch {
      // Its cause or own properties do not encode: send what identifies it.
      const plain = new Error(error.message);
      plain.name = error.name;
      if (error.stack !== undefined) plain.stack = error.stack;
      return encodeOutput({ ...this.record("error", output, durationMs), error: plain });
    }
  }

  private record(type: OutputRecord["type"], output: CapturedOutput, durationMs: number): OutputRecord {
    return { format: RUNNER_FORMAT, type, ...output, durationMs, host: this.host, pid: process.pid };
  }
}

function toError(err: unknown): Error {
  if (err instanceof Error) return err;
  return new Error(
    typeof err === "string"
      ? err
      : `a non-Error value was thrown: ${inspect(err, { depth: 2, breakLength: Infinity })}`,
  );
}
