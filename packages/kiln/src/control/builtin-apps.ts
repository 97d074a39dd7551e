import { create } from "@bufbuild/protobuf";
import { JOB_APPLICATION } from "@kiln/protocol/jobs";
import { RUNNER_TEMPLATE } from "@kiln/protocol/runner";
import { flame } from "@kiln/protocol/proto";
import { PING_APPLICATION } from "../apps/ping/ping.js";
import { builtinCommand, type BuiltinService } from "../apps/service-entry.js";
import { CONCURRENCY_LABEL, type ApplicationRegistry } from "./applications.js";

interface BuiltinApp {
  name: string;
  service: BuiltinService;
  /** Tasks one executor runs at once. */
  concurrency: number;
  description: string;
}

const BUILTIN_APPS: readonly BuiltinApp[] = [
  {
    name: PING_APPLICATION,
    service: "ping",
    concurrency: 256,
    description: "Built-in test service: sleeps and allocates as asked, answers with its host and time taken",
  },
  {
    // Runner.open copies this one by name.
    name: RUNNER_TEMPLATE,
    service: "run",
    concurrency: 64,
    description:
      "Built-in Runner template: Runner.open copies it into an application that runs your project's exported " +
      "functions and classes (it is not meant to be run by itself)",
  },
  {
    name: JOB_APPLICATION,
    service: "exec",
    // One command per executor: an executor is one cpu's worth of the node.
    concurrency: 1,
    description:
      "Built-in job runner: each task runs a command in a fresh working directory and collects its declared " +
      "output files into the object cache (kiln exec, runJob)",
  },
];

/**
 * Applications every Kiln cluster has, (re)registered at each start so they follow the installed version
 * (and a store from before symbolic commands gets them).
 */
export function registerBuiltinApps(apps: ApplicationRegistry): void {
  for (const app of BUILTIN_APPS)
    apps.register(
      app.name,
      create(flame.ApplicationSpecSchema, {
        shim: flame.Shim.Host,
        description: app.description,
        labels: ["builtin", `${CONCURRENCY_LABEL}=${app.concurrency}`],
        // Each agent resolves this to its own Node and install: the control plane's paths mean nothing on another host.
        command: builtinCommand(app.service),
        delayRelease: 10n,
      }),
      { upsert: true },
    );
}
