import { encodeValue, sha256Hex, withTimeout } from "@kiln/protocol";
import { getData, Runner, type OutputData } from "@kiln/sdk";
import type { Command } from "commander";
import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { CommandFailed, isUnreachable, UnreachableError } from "../exit-codes.js";
import { printJson } from "../json.js";
import { wholeNumber, type GlobalOptions } from "../options.js";

/** The exports of runner-check/src/check.ts (outside this package's sources, so not importable for its types). */
interface CheckModule {
  square(n: number): number;
  add(a: number, b: number): number;
  blob(bytes: number, seed: number): Uint8Array;
  sha256(data: Uint8Array): string;
  shout(text: string): string;
  encodedSize(value: unknown): number;
  fail(message: string): never;
  Tally: new (start: number) => { total: number; add(n: number): number };
}

interface CheckFlags {
  json: boolean;
  timeout: number;
}

interface StepResult {
  step: string;
  ok: boolean;
  ms: number;
  detail: string;
}

/** The project this command packages: shipped with kiln, beside dist/ and src/. */
const CHECK_PROJECT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../runner-check");

class CheckFailed extends Error {}

function expectEqual(actual: unknown, expected: unknown, what: string): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected))
    throw new CheckFailed(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

/**
 * Runs the Runner end to end on the configured cluster, one step after the
 * other, each bounded by the timeout, and always cleans up what it made.
 */
async function runnerCheck(globals: GlobalOptions, f: CheckFlags): Promise<StepResult[]> {
  const results: StepResult[] = [];
  const timeoutMs = f.timeout * 1000;
  const record = (r: StepResult): boolean => {
    results.push(r);
    if (!f.json)
      process.stdout.write(`${r.ok ? "✓" : "✗"} ${r.step.padEnd(22)} ${String(r.ms).padStart(6)} ms  ${r.detail}\n`);
    return r.ok;
  };
  const step = async (name: string, work: () => Promise<string>): Promise<boolean> => {
    const started = performance.now();
    const ms = () => Math.round(performance.now() - started);
    try {
      const detail = await withTimeout(work(), timeoutMs, name);
      return record({ step: name, ok: true, ms: ms(), detail });
    } catch (err) {
      // An unreachable cluster is not a failed step: the command reports it (exit code 3).
      if (isUnreachable(err)) throw err;
      return record({
        step: name,
        ok: false,
        ms: ms(),
        detail: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
      });
    }
  };

  const name = `kiln-runner-check-${randomBytes(3).toString("hex")}`;
  let runner: Runner | undefined;
  const opened = await step("package and register", async () => {
    runner = await Runner.open(name, {
      project: CHECK_PROJECT,
      ...(globals.endpoint ? { endpoint: globals.endpoint } : {}),
      ...(globals.token ? { token: globals.token, cacheToken: globals.token } : {}),
      ...(globals.context ? { context: globals.context } : {}),
      ...(globals.config ? { configPath: globals.config } : {}),
      ...(globals.cacheEndpoint ? { cacheEndpoint: globals.cacheEndpoint } : {}),
    });
    return `application ${name} from ${CHECK_PROJECT}`;
  });
  if (!opened || !runner) return results;
  const r = runner;
  try {
    const mod = r.module<CheckModule>("src/check.ts");
    const square = await r.service(mod, "square");
    const add = await r.service(mod, "add");

    await step("install and first call", async () => {
      expectEqual(await square(7), 49, "square(7)");
      const encodedSize = await r.service(mod, "encodedSize");
      expectEqual(
        await encodedSize("abc"),
        encodeValue("abc").byteLength,
        "encodedSize('abc') (the SDK, imported remotely)",
      );
      return "square(7) = 49; the module loaded and imported @kiln/sdk on the executor";
    });
    await step("many calls", async () => {
      const values = await r.get(Array.from({ length: 200 }, (_, i) => add(i, 1)));
      expectEqual(
        values.reduce((a, b) => a + b, 0),
        20_100,
        "sum of add(i, 1) for i < 200",
      );
      return "200 calls of add, results in order";
    });
    await step("future chaining", async () => {
      expectEqual(await add(square(3), square(4)), 25, "add(square(3), square(4))");
      const blob = await r.service(mod, "blob");
      const sha256 = await r.service(mod, "sha256");
      const big = blob(4 << 20, 9);
      const local = sha256Hex(Uint8Array.from({ length: 4 << 20 }, (_, i) => (i * 31 + 9) & 0xff));
      expectEqual(await sha256(big), local, "sha256 of a 4 MiB result passed by reference");
      return "futures as arguments, a 4 MiB result passed by reference";
    });
    await step("stateful instance", async () => {
      const tally = await r.service(mod, "Tally", { args: [100], stateful: true });
      for (const n of [1, 2, 3]) await tally.add(n);
      expectEqual(await tally.add(4), 110, "Tally(100) after adding 1, 2, 3, 4");
      return "state saved and restored around each call";
    });
    await step("remote error", async () => {
      const fail = await r.service(mod, "fail");
      const err = await fail("on purpose").then(
        () => undefined,
        (e: unknown) => e as Error & { taskId?: string },
      );
      if (!err) throw new CheckFailed("fail() did not reject");
      expectEqual([err.name, err.message], ["CheckError", "on purpose"], "the remote error");
      if (!err.taskId) throw new CheckFailed("the remote error has no taskId");
      return `rejected with CheckError: on purpose (task ${err.taskId})`;
    });
    await step("output capture", async () => {
      const shout = await r.service(mod, "shout");
      const call = shout("hi");
      expectEqual(await call, "HI", "shout('hi')");
      const { stdout } = await call.output();
      if (!stdout.includes("shouting hi")) throw new CheckFailed(`stdout was ${JSON.stringify(stdout)}`);
      return "the call's console output came back with it";
    });
    await step("getData", async () => {
      const call = square(12);
      await call;
      const task = await r.client.session(call.sessionId).getTask(call.taskId!);
      const input = await getData(task.spec!.input!, { cache: r.cache });
      const output = (await getData(task.spec!.output!, { cache: r.cache })) as OutputData;
      if (input.type !== "input") throw new CheckFailed(`input decoded as ${input.type}`);
      expectEqual(input.args, [12], "the stored input's args");
      expectEqual(output.result, 144, "the stored output's result");
      return `task ${call.sessionId}/${call.taskId}: square(12) → 144`;
    });
  } finally {
    await step("clean up", async () => {
      await r.close();
      const left = await r.client.getApplication(name).then(
        () => true,
        () => false,
      );
      if (left) throw new CheckFailed(`application ${name} is still registered`);
      return `application ${name} and its objects removed`;
    });
  }
  return results;
}

/** Adds `kiln runner-check`: an end-to-end self-test of the Runner on the configured cluster. */
export function registerRunnerCheck(program: Command): void {
  program
    .command("runner-check")
    .description("test the Runner end to end on the configured cluster (package, calls, futures, state, getData)")
    .option("--json", "print the results as JSON", false)
    .option("--timeout <s>", "limit for each step", wholeNumber(1), 120)
    .addHelpText(
      "after",
      "\nIt registers a throwaway application kiln-runner-check-<random> from a small project shipped with kiln,\n" +
        "runs each step, and removes the application and its objects. Exit 0 when every step passed, 1 if not.\n" +
        "\nExamples:\n  kiln runner-check\n  kiln runner-check --json --endpoint http://10.0.0.5:7420 --cache-endpoint http://10.0.0.5:7422\n",
    )
    .action(async (f: CheckFlags, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      let results: StepResult[];
      try {
        results = await runnerCheck(globals, f);
      } catch (err) {
        if (isUnreachable(err))
          throw new UnreachableError(globals.endpoint ?? "the configured cluster", { cause: err });
        throw err;
      }
      const ok = results.every((r) => r.ok);
      if (f.json) printJson({ ok, steps: results.map((r) => ({ ...r })) });
      else if (ok) process.stdout.write("Runner check passed.\n");
      const failed = results.filter((r) => !r.ok).map((r) => r.step);
      if (failed.length > 0) throw new CommandFailed(`Runner check failed: ${failed.join(", ")}`);
    });
}
