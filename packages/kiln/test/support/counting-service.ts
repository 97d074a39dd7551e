// A service that records every execution: "start <session>/<task> <pid>" when a task
// begins (with the pid that runs it) and "done <session>/<task>" when it ends, appended to $COUNT_FILE, so a
// test can count how often each task ran. The input is how long a task takes, ms.
import { serve } from "@kiln/service";
import * as fs from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

const file = process.env.COUNT_FILE;
if (!file) throw new Error("counting-service: COUNT_FILE is not set");

await serve({
  async onTaskInvoke({ sessionId, taskId, input }) {
    const id = `${sessionId}/${taskId}`;
    // One short O_APPEND write per line: lines of concurrent tasks and processes never interleave.
    fs.appendFileSync(file, `start ${id} ${process.pid}\n`);
    await sleep(Number(new TextDecoder().decode(input)) || 0);
    fs.appendFileSync(file, `done ${id}\n`);
    return id;
  },
});
