import { create } from "@bufbuild/protobuf";
import { flame } from "@kiln/sdk/proto";
import { execServiceEntry } from "../apps/exec/location.js";
import { pingServiceEntry } from "../apps/ping/location.js";
import { runServiceEntry } from "../apps/run/location.js";
import { CONCURRENCY_LABEL, type ApplicationRegistry } from "./applications.js";

/** Applications every Kiln cluster has, (re)registered at each start so they follow the installed version. */
export function registerBuiltinApps(apps: ApplicationRegistry): void {
  apps.register(
    "kiln-ping",
    create(flame.ApplicationSpecSchema, {
      shim: flame.Shim.Host,
      description: "Built-in test service: sleeps and allocates as asked, answers with its host and time taken",
      labels: ["builtin", `${CONCURRENCY_LABEL}=256`],
      command: process.execPath,
      arguments: [pingServiceEntry()],
      delayRelease: 10n,
    }),
    { upsert: true },
  );
  apps.register(
    "kiln-run",
    create(flame.ApplicationSpecSchema, {
      shim: flame.Shim.Host,
      description:
        "Built-in Runner template: Runner.open copies it into an application that runs your project's exported " +
        "functions and classes (it is not meant to be run by itself)",
      labels: ["builtin", `${CONCURRENCY_LABEL}=64`],
      command: process.execPath,
      arguments: [runServiceEntry()],
      delayRelease: 10n,
    }),
    { upsert: true },
  );
  apps.register(
    "kiln-exec",
    create(flame.ApplicationSpecSchema, {
      shim: flame.Shim.Host,
      description:
        "Built-in job runner: each task runs a command in a fresh working directory and collects its declared " +
        "output files into the object cache (kiln exec, runJob)",
      // One command per executor: an executor is one cpu's worth of the node.
      labels: ["builtin", `${CONCURRENCY_LABEL}=1`],
      command: process.execPath,
      arguments: [execServiceEntry()],
      delayRelease: 10n,
    }),
    { upsert: true },
  );
}
