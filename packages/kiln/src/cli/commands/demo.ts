import { KilnClient } from "@kiln/sdk";
import { Option, type Command } from "commander";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { InterruptedError } from "../exit-codes.js";
import { formatCapacity } from "../format.js";
import { wholeNumber } from "../options.js";
import { abortOnSignal } from "../signals.js";
import { pingAndReport } from "./ping.js";
import { runProgram } from "../run-program.js";

interface DemoFlags {
  tasks: number;
  executors?: number;
  run?: string;
  runTimeout: number;
}

// Server log lines stay quiet while the demo runs and are shown only if something goes wrong.
const KEPT_LOG_LINES = 30;

function tail(lines: string[], title: string): string {
  return lines.length === 0 ? "" : `\n${title}:\n${lines.map((l) => `  ${l}\n`).join("")}`;
}

/** In a checkout (where npm start runs it) `kiln` is not on the PATH: the next steps say how to type it. */
function invokedAs(): string {
  return existsSync(path.join(process.cwd(), "node_modules", ".bin", "kiln")) ? " (here `kiln` is `npx kiln`)" : "";
}

async function demo(f: DemoFlags): Promise<void> {
  const out = (text: string): boolean => process.stdout.write(text);
  out(`Kiln demo: start a whole cluster on this machine, run ${f.tasks} small tasks through it, clean up.\n\n`);

  const tempDir = await mkdtemp(path.join(os.tmpdir(), "kiln-demo-"));
  const dataDir = path.join(tempDir, "data");
  const logs: string[] = [];
  const log = (line: string): void => {
    logs.push(line);
    if (logs.length > KEPT_LOG_LINES) logs.shift();
  };
  try {
    await abortOnSignal(async (signal) => {
      const { startLocalCluster } = await import("../../cluster/local-cluster.js");
      const cluster = await startLocalCluster({ dataDir, port: 0, executors: f.executors, log });
      // Straight at the demo cluster: the user's config file and KILN_* settings do not apply here.
      const client = new KilnClient({ endpoint: cluster.endpoint });
      try {
        if (signal.aborted) throw new InterruptedError("the demo cluster was stopped");
        out(`Started:\n  control plane  ${cluster.endpoint}  (its state: ${dataDir})\n`);
        for (const node of await client.listNodes()) {
          const capacity = node.status?.capacity ? ` with ${formatCapacity(node.status.capacity)}` : "";
          out(`  agent          node ${node.metadata?.name ?? "?"}${capacity}, a child process\n`);
        }
        out(`  application    kiln-ping, the built-in ping service\n\n`);
        out(`Running the same workload as \`kiln ping -p -t ${f.tasks}\`:\n`);
        const progress = process.stdout.isTTY === true;
        await pingAndReport(client, { tasks: f.tasks, signal }, { view: "summary", progress });
        if (f.run) {
          out(`\nRunning ${f.run} against the same cluster:\n`);
          const env = { KILN_ENDPOINT: cluster.endpoint, KILN_CACHE_ENDPOINT: cluster.cacheEndpoint };
          await runProgram(f.run, { env, timeoutMs: f.runTimeout * 1000, signal });
        }
      } catch (err) {
        if (!(err instanceof InterruptedError)) {
          process.stderr.write(tail(logs, "Last control plane log lines"));
          const agentLog = path.join(dataDir, "agent.log");
          if (existsSync(agentLog))
            process.stderr.write(
              tail(readFileSync(agentLog, "utf8").trimEnd().split("\n").slice(-KEPT_LOG_LINES), "Last agent log lines"),
            );
        }
        throw err;
      } finally {
        client.close();
        await cluster.close();
      }
    });
  } finally {
    await rm(tempDir, { recursive: true, force: true });
    out(`\nStopped the cluster and removed ${tempDir}.\n`);
  }
  out(
    `\nNext steps${invokedAs()}:\n` +
      `  kiln up                    keep a cluster running (state in ~/.kiln/data)\n` +
      `  kiln ping -t 100           in another terminal: 100 tasks, one row each\n` +
      `  kiln list -s               sessions; then kiln view -s <id>\n` +
      `  kiln register -f app.yaml  your own application (see docs/cli.md)\n`,
  );
}

/** Adds `kiln demo` (what `npm start` runs). */
export function registerDemo(program: Command): void {
  program
    .command("demo")
    .description("start a throwaway local cluster, run the ping workload on it, and clean up (what `npm start` runs)")
    .addOption(new Option("--tasks <n>", "number of tasks").argParser(wholeNumber(1)).default(2000))
    .addOption(
      new Option("--executors <n>", "executors on the local node (default: one per CPU)").argParser(
        wholeNumber(1, 4096),
      ),
    )
    .option(
      "--run <program>",
      "then run this TypeScript or JavaScript program against the cluster (npm start: examples/pi)",
    )
    .addOption(
      new Option("--run-timeout <s>", "stop the --run program after this many seconds")
        .argParser(wholeNumber(1))
        .default(600),
    )
    .action((f: DemoFlags) => demo(f));
}
