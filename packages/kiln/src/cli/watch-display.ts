import { abortOnSignal } from "./signals.js";

/** Where `-w/--watch` puts each new state of what it watches. */
export interface WatchDisplay {
  /**
   * Something changed; `render` gives the text of the new state. It is called
   * when the frame is drawn (changes close together make one frame), and a
   * text equal to the one on screen is not printed again.
   */
  show(render: () => string): void;
  /** Prints the state still waiting for its turn, if any; call once the watch ends. */
  close(): void;
}

/** Redraws come at most this often, so a busy session does not flood the screen or a log. */
const MIN_FRAME_INTERVAL_MS = 100;
const CLEAR_SCREEN = "\x1b[H\x1b[2J";

/**
 * A terminal (`redraw`) shows only the latest state, in place of the last one;
 * anything else (`append`: a pipe, a file, a test) gets each state after the
 * previous one. Frames closer together than MIN_FRAME_INTERVAL_MS merge into
 * the latest: no state is lost at the end, only intermediate ones may be.
 *
 * @example
 * const display = watchDisplay(process.stdout.isTTY ? "redraw" : "append");
 * display.show(() => sessionTable(sessions)); ...; display.close();
 */
function watchDisplay(mode: "redraw" | "append", out: NodeJS.WritableStream = process.stdout): WatchDisplay {
  let shown: string | undefined;
  let waiting: (() => string) | undefined;
  let lastDrawAt = -Infinity;
  let timer: NodeJS.Timeout | undefined;
  const draw = (): void => {
    timer = undefined;
    const render = waiting;
    waiting = undefined;
    if (render === undefined) return;
    const frame = render();
    if (frame === shown) return;
    shown = frame;
    lastDrawAt = performance.now();
    out.write(mode === "redraw" ? CLEAR_SCREEN + frame : frame);
  };
  return {
    show(render) {
      waiting = render;
      if (timer) return;
      const wait = lastDrawAt + MIN_FRAME_INTERVAL_MS - performance.now();
      if (wait <= 0) draw();
      else timer = setTimeout(draw, wait);
    },
    close() {
      clearTimeout(timer);
      draw();
    },
  };
}

/**
 * Runs a watch until it ends by itself or Ctrl-C stops it (which is how a
 * watch normally ends, so it exits 0). Tables redraw in place on a terminal;
 * JSON (one line per state) and anything not a terminal get every state in turn.
 *
 * @example
 * await runWatch(json, async (display, signal) => { for await (const c of changes(signal)) display.show(() => text(c)); });
 */
export async function runWatch(
  json: boolean,
  watch: (display: WatchDisplay, signal: AbortSignal) => Promise<void>,
): Promise<void> {
  const display = watchDisplay(!json && process.stdout.isTTY === true ? "redraw" : "append");
  try {
    await abortOnSignal((signal) => watch(display, signal));
  } finally {
    display.close();
  }
}
