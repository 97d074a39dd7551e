/**
 * A chain of remote calls: generate → normalize → summarize. Each stage gets
 * the previous one's future, so the 8 MB intermediate arrays go from executor
 * to executor through the object cache and never through this client.
 *
 *   kiln up    # in another terminal
 *   node --import tsx examples/pipeline/main.ts
 */
import { Runner } from "@kiln/sdk";
import { fileURLToPath } from "node:url";

await using runner = await Runner.open("pipeline", { project: fileURLToPath(new URL(".", import.meta.url)) });
const stages = runner.module<typeof import("./src/stages.js")>("src/stages.ts");
const generate = await runner.service(stages, "generate");
const normalize = await runner.service(stages, "normalize");
const summarize = await runner.service(stages, "summarize");

const summaries = [1, 2, 3].map((seed) => summarize(normalize(generate(1_000_000, seed)), 10));
for (const [i, s] of (await runner.get(summaries)).entries()) {
  const bars = s.histogram.map((h) => "▁▂▃▄▅▆▇█"[Math.min(7, Math.floor((h / s.count) * 40))]).join("");
  console.log(`seed ${i + 1}: ${s.count} values, mean ${s.mean.toFixed(4)}, histogram ${bars}`);
}
