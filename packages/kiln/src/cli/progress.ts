import cliProgress from "cli-progress";
import type { TaskOutcome } from "./ping-workload.js";

/** Shows how many tasks finished; a no-op unless created enabled. */
export interface TaskProgress {
  /** One more task finished. */
  tick(outcome: TaskOutcome): void;
  /** Leaves the final bar on screen and ends its line. */
  stop(): void;
}

/**
 * A live bar on stdout for `total` tasks, or nothing when `enabled` is false
 * (not a TTY, or output that must stay clean).
 *
 * @example
 * const p = createTaskProgress(100, process.stdout.isTTY === true);
 * p.tick("succeeded"); p.stop();
 */
export function createTaskProgress(total: number, enabled: boolean): TaskProgress {
  if (!enabled) return { tick: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stdout,
      format:
        "  {bar} {percentage}% | {value}/{total} tasks | {failed} failed | {cancelled} cancelled | {duration_formatted}",
      hideCursor: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  const counts = { failed: 0, cancelled: 0 };
  bar.start(total, 0, counts);
  return {
    tick(outcome) {
      if (outcome !== "succeeded") counts[outcome]++;
      bar.increment(1, counts);
    },
    stop() {
      bar.stop();
    },
  };
}
