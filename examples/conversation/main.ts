/**
 * A stateful class across executors: the conversation's history lives in the
 * object cache, so when the executor process holding it dies (this example
 * kills it halfway, when the cluster runs on this machine), the next call is
 * answered by a new process that carries on where the old one stopped.
 *
 *   kiln up    # in another terminal
 *   node --import tsx examples/conversation/main.ts
 */
import { Runner } from "@kiln/sdk";
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";

await using runner = await Runner.open("conversation", { project: fileURLToPath(new URL(".", import.meta.url)) });
const mod = runner.module<typeof import("./src/conversation.js")>("src/conversation.ts");
const chat = await runner.service(mod, "Conversation", { args: ["Kiln"], stateful: true });

for (const message of ["hello", "what is a kiln?", "and a glaze?", "thanks"]) {
  const reply = await chat.say(message);
  console.log(`turn ${reply.turn} (executor pid ${reply.pid}): ${reply.text}`);
  if (reply.turn === 2 && reply.host === hostname()) {
    process.kill(reply.pid, "SIGKILL");
    console.log(`  killed executor process ${reply.pid}; the conversation goes on elsewhere`);
  }
}
console.log("transcript:", await chat.transcript());
