import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** The built CLI (`npx tsc -b packages/sdk packages/kiln` must have run). */
export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../dist/cli/main.js");

// A HOME that does not exist and no KILN_* variables, so the user's own config never leaks into a test
// (and nothing a test runs may write under HOME).
const HOME = path.join(os.tmpdir(), `kiln-cli-test-home-${process.pid}`);
export const CLI_ENV: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries({ ...process.env, HOME }).filter(
    ([key]) =>
      ![
        "KILN_ENDPOINT",
        "KILN_CACHE_ENDPOINT",
        "KILN_TOKEN",
        "KILN_NODE_TOKEN",
        "KILN_CONFIG",
        "KILN_TLS_CA",
        "KILN_TLS_CLIENT_CERT",
        "KILN_TLS_CLIENT_KEY",
        "FLAME_ENDPOINT",
        "FLAME_CACHE_ENDPOINT",
      ].includes(key),
  ),
);

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `kiln ...args` to completion (killed after `timeoutMs`), with `env` on top of CLI_ENV. */
export function runCli(args: readonly string[], timeoutMs = 30_000, env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runCommand(process.execPath, [CLI, ...args], {
    env: { ...CLI_ENV, ...env },
    timeoutMs,
    what: `kiln ${args.join(" ")}`,
  });
}

/** Whether script(1) is here to give a command a terminal (util-linux has it; a minimal image may not). */
export const HAS_SCRIPT = spawnSync("script", ["--version"]).status === 0;

/**
 * Runs `kiln ...args` with a terminal as its stdout (a pseudo-terminal made by script(1)), to see
 * what a person at a terminal sees; the output has the terminal's line ends (\r\n) and escapes.
 */
export function runCliInTerminal(args: readonly string[], timeoutMs = 30_000): Promise<CliResult> {
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const command = [process.execPath, CLI, ...args].map(quote).join(" ");
  return runCommand("script", ["-qec", command, "/dev/null"], {
    env: CLI_ENV,
    timeoutMs,
    what: `kiln ${args.join(" ")} (in a terminal)`,
  });
}

/** Runs any command to completion (killed after `timeoutMs`), in `cwd`, with `env` (default: this process's). */
export function runCommand(
  command: string,
  args: readonly string[],
  o: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; what?: string } = {},
): Promise<CliResult> {
  const timeoutMs = o.timeoutMs ?? 30_000;
  const what = o.what ?? `${command} ${args.join(" ")}`;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${what} did not finish within ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A long-running `kiln` process (up, server, agent) with its output so far. */
export interface CliProcess {
  child: ChildProcess;
  output(): string;
  /** Resolves with the first match of `pattern` in stdout+stderr. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code once the process ends by itself (null if killed by a signal). */
  exited(timeoutMs?: number): Promise<number | null>;
  /** SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code (null if killed). */
  stop(timeoutMs?: number): Promise<number | null>;
}

/** Starts `kiln ...args`; `stdin`, when given, is written to its stdin, which is then closed (a --token-file -). */
export function startCli(args: readonly string[], env: NodeJS.ProcessEnv = {}, stdin?: string): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...CLI_ENV, ...env },
    stdio: [stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
  });
  child.stdin?.end(stdin);
  return watchProcess(child, `kiln ${args.join(" ")}`);
}

/** Follows the output and exit of a started child (its stdout and stderr must be pipes); `what` names it in errors. */
export function watchProcess(child: ChildProcess, what: string): CliProcess {
  let output = "";
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const listeners = new Set<() => void>();
  const onData = (d: Buffer): void => {
    output += d.toString();
    for (const l of listeners) l();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  return {
    child,
    output: () => output,
    exited(timeoutMs = 30_000) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} still running after ${timeoutMs} ms`)), timeoutMs);
      });
      return Promise.race([exited, timeout]).finally(() => clearTimeout(timer));
    },
    waitFor(pattern, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = output.match(pattern);
          if (!m) return;
          finish();
          resolve(m);
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`no ${pattern} within ${timeoutMs} ms; output:\n${output}`));
        }, timeoutMs);
        const onExit = (): void => {
          finish();
          reject(new Error(`${what} exited before ${pattern}; output:\n${output}`));
        };
        const finish = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
          child.off("exit", onExit);
        };
        listeners.add(check);
        child.once("exit", onExit);
        check();
        if (child.exitCode !== null || child.signalCode !== null) onExit();
      });
    },
    async stop(timeoutMs = 20_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        const code = await exited;
        clearTimeout(timer);
        return code;
      }
      return exited;
    },
  };
}

/**
 * A loopback port that refuses connections until the test process exits. It is the local port of a
 * connection this process holds open: nothing listens on it, and nobody can start to while the
 * connection lives (a port bound and released, instead, is anyone's to take a moment later).
 */
export async function closedPort(): Promise<number> {
  const server = net.createServer((accepted) => accepted.unref());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const holder = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => holder.once("connect", resolve).once("error", reject));
  holder.unref();
  server.close();
  return holder.localPort!;
}

/** A `kiln up` on free ports (port 0) and the endpoints it printed. */
export interface KilnUp {
  process: CliProcess;
  endpoint: string;
  cacheEndpoint: string;
}

/** Starts `kiln up` with its state in `dataDir` and waits until it says it is up. */
export async function startKilnUp(dataDir: string, executors = 2): Promise<KilnUp> {
  const up = startCli(["up", "--data-dir", dataDir, "--port", "0", "--executors", String(executors)]);
  try {
    const m = await up.waitFor(/Kiln is up at (http:\/\/\S+)\n\s+object cache: (http:\/\/\S+)/, 40_000);
    return { process: up, endpoint: m[1]!, cacheEndpoint: m[2]! };
  } catch (err) {
    await up.stop();
    throw err;
  }
}
