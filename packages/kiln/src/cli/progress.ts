import cliProgress from "cli-progress";

/** Shows how many tasks finished; a no-op unless created enabled. */
export interface TaskProgress {
  /** One more task finished. */
  tick(failed: boolean): void;
  /** Leaves the final bar on screen and ends its line. */
  stop(): void;
}

/**
 * A live bar on stdout for `total` tasks, or nothing when `enabled` is false
 * (not a TTY, or output that must stay clean).
 *
 * @example
 * const p = createTaskProgress(100, process.stdout.isTTY === true);
 * p.tick(false); p.stop();
 */
export function createTaskProgress(total: number, enabled: boolean): TaskProgress {
  if (!enabled) return { tick: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stdout,
      format: "  {bar} {percentage}% | {value}/{total} tasks | {failed} failed | {duration_formatted}",
      hideCursor: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  let failed = 0;
  bar.start(total, 0, { failed });
  return {
    tick(taskFailed) {
      if (taskFailed) failed++;
      bar.increment(1, { failed });
    },
    stop() {
      bar.stop();
    },
  };
}
