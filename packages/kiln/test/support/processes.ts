import * as fs from "node:fs";
import * as net from "node:net";

/** Loopback ports [first, first + span) that this process holds bound, so nothing else can take them. */
export interface HeldPorts {
  first: number;
  /** Releases one of them (for the command under test to bind). */
  free(port: number): Promise<void>;
  /** Releases all that are still held. */
  close(): Promise<void>;
}

/**
 * A range of `span` loopback ports, bound by this process until released. Picked below the kernel's
 * ephemeral range (32768+): a port handed out for port 0 can be the local port of another process's
 * outgoing connection a moment later, which made a control plane fail to start now and then.
 */
export async function holdPorts(span: number): Promise<HeldPorts> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const first = 20_000 + Math.floor(Math.random() * 12_000);
    const held = new Map<number, net.Server>();
    const free = async (port: number): Promise<void> => {
      const srv = held.get(port);
      held.delete(port);
      if (srv) await new Promise((resolve) => srv.close(resolve));
    };
    const close = async (): Promise<void> => {
      await Promise.all([...held.keys()].map(free));
    };
    try {
      for (let port = first; port < first + span; port++) {
        const srv = net.createServer();
        await new Promise<void>((resolve, reject) => {
          srv.once("error", reject);
          srv.listen(port, "127.0.0.1", resolve);
        });
        held.set(port, srv);
      }
      return { first, free, close };
    } catch {
      await close();
    }
  }
  throw new Error("found no free range of loopback ports in 20000-32000");
}

/**
 * Polls `check` every 50 ms until it returns a value, or throws after `timeoutMs` with `what` in the
 * message. Only for what no event tells: a pid disappearing, a state only a list call shows.
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether `pid` runs; a zombie (exited, not yet reaped by whoever inherited it) counts as gone. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // The state follows the command, which is in parentheses and may hold spaces.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "latin1");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false; // gone between the two looks
  }
}

/** Pids of live processes whose environment mentions `text` (e.g. an agent's work dir in KILN_INSTANCE_ENDPOINT). */
export function processesWithEnv(text: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/environ`, "latin1").includes(text)) pids.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}
