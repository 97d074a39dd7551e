// A service for the agent tests, built on the SDK's serve(). Task inputs are
// commands ("pid", "env:NAME", "sleep:MS", "hang", "crash", ...); TEST_SERVICE_MODE
// changes how the session hooks behave.
import { serve } from "@kiln/service";
import { setTimeout as sleep } from "node:timers/promises";

const mode = process.env.TEST_SERVICE_MODE ?? "";
let commonData = "";

await serve({
  onSessionEnter(ctx) {
    if (mode === "enter-fails") throw new Error("enter refused by the test service");
    commonData = new TextDecoder().decode(ctx.commonData);
    // Exits a moment after a successful enter, so the agent has reported BOUND before it sees the exit.
    if (mode === "exit-after-enter") setTimeout(() => process.exit(4), 200);
  },
  async onTaskInvoke({ input }) {
    const command = new TextDecoder().decode(input);
    const [verb, arg = ""] = command.split(/:(.*)/s);
    switch (verb) {
      case "pid":
        return String(process.pid);
      case "env":
        return process.env[arg] ?? "(unset)";
      case "cwd":
        return process.cwd();
      case "argv":
        return JSON.stringify(process.argv.slice(2));
      case "common":
        return commonData;
      case "sleep":
        await sleep(Number(arg));
        return "slept";
      case "hang":
        process.stderr.write("hanging\n");
        return new Promise<never>(() => {});
      case "crash":
        process.stderr.write("crashing on purpose\n");
        // Dies while this call is in flight, as a crash mid-task does.
        setTimeout(() => process.exit(3), 20);
        return new Promise<never>(() => {});
      case "fail":
        throw new Error(`failed: ${arg}`);
      default:
        return `echo:${command}`;
    }
  },
});
