/**
 * Estimates π by Monte Carlo across a Kiln cluster: `sample` (src/pi.ts) runs
 * remotely, once per batch, and the results come back in completion order.
 *
 *   kiln up                       # in another terminal (or: npm start, which runs this on a demo cluster)
 *   node --import tsx examples/pi/main.ts [batches] [points-per-batch]
 */
import { Runner } from "@kiln/sdk";
import cliProgress from "cli-progress";
import { fileURLToPath } from "node:url";

const batches = Number(process.argv[2] ?? 100);
const pointsPerBatch = Number(process.argv[3] ?? 1_000_000);

const started = performance.now();
await using runner = await Runner.open("pi", { project: fileURLToPath(new URL(".", import.meta.url)) });
const pi = runner.module<typeof import("./src/pi.js")>("src/pi.ts");
const sample = await runner.service(pi, "sample", { warmup: 2 });

const futures = Array.from({ length: batches }, (_, i) => sample(pointsPerBatch, i + 1));
const bar = new cliProgress.SingleBar(
  { format: "  {bar} {value}/{total} batches | π ≈ {estimate}", hideCursor: true, noTTYOutput: false },
  cliProgress.Presets.shades_classic,
);
let inside = 0;
let points = 0;
bar.start(batches, 0, { estimate: "…" });
for await (const done of runner.select(futures)) {
  const result = await done;
  inside += result.inside;
  points += result.points;
  bar.increment(1, { estimate: ((4 * inside) / points).toFixed(6) });
}
bar.stop();

const estimate = (4 * inside) / points;
const seconds = (performance.now() - started) / 1000;
console.log(
  `π ≈ ${estimate.toFixed(6)} (off by ${Math.abs(estimate - Math.PI).toExponential(2)}) ` +
    `from ${points.toLocaleString("en-US")} points in ${batches} remote calls, ${seconds.toFixed(1)} s`,
);
