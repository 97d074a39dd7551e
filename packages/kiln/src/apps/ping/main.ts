#!/usr/bin/env node
// kiln-ping: the built-in test service. The agent starts it with the socket in
// KILN_INSTANCE_ENDPOINT; each task sleeps/allocates as asked and answers JSON.
import { serve } from "@kiln/service";
import { parsePingInput, ping } from "./ping.js";

await serve({
  onTaskInvoke: async (task) => JSON.stringify(await ping(parsePingInput(task.input), task)),
});
